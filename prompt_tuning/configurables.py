"""Registers the library's classes and functions with gin under short module
names (`t5.T5Config`, `prompts.Prompt`, `models.EncoderDecoderModel`, ...),
the names the files in gin/ use. Imported by pt-train and pt-eval."""
import gin
import seqio

from prompt_tuning import initializers  # pylint: disable=unused-import  (gin-configurable)
from prompt_tuning import models
from prompt_tuning import optimizers  # pylint: disable=unused-import
from prompt_tuning import partitioning  # pylint: disable=unused-import
from prompt_tuning import prompts
from prompt_tuning import smop
from prompt_tuning import t5

gin.external_configurable(t5.T5Config, module="t5")
gin.external_configurable(t5.Transformer, module="t5")
gin.external_configurable(prompts.Prompt, module="prompts")
gin.external_configurable(smop.SMoP, module="smop")
gin.external_configurable(models.EncoderDecoderModel, module="models")
gin.external_configurable(seqio.SentencePieceVocabulary, module="seqio")
gin.external_configurable(seqio.ByteVocabulary, module="seqio")

# The programs' own entry points (`train`, `evaluate`) are gin-configurable too.
from prompt_tuning import evaluation as _evaluation  # pylint: disable=unused-import,g-import-not-at-top,g-bad-import-order
from prompt_tuning import trainer as _trainer  # pylint: disable=unused-import,g-import-not-at-top,g-bad-import-order
