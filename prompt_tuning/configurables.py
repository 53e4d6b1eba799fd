"""Registers the library's classes and functions with gin under short module
names (`t5.T5Config`, `prompts.Prompt`, `encoder_decoder.EncoderDecoderModel`, ...),
the names the files in gin/ use. Imported by pt-train and pt-eval."""
import gin
import seqio

from prompt_tuning import methods
from prompt_tuning.methods import initializers  # pylint: disable=unused-import  (gin-configurable)
from prompt_tuning.methods import prompts
from prompt_tuning.methods import smop
from prompt_tuning.model import encoder_decoder
from prompt_tuning.model import partitioning  # pylint: disable=unused-import
from prompt_tuning.model import t5
from prompt_tuning.training import optimizers  # pylint: disable=unused-import

gin.external_configurable(t5.T5Config, module="t5")
gin.external_configurable(t5.Transformer, module="t5")
gin.external_configurable(prompts.Prompt, module="prompts")
gin.external_configurable(smop.SMoP, module="smop")
gin.external_configurable(methods.Methods, module="methods")
gin.external_configurable(methods.LoRAMethod, module="methods")
gin.external_configurable(methods.PrefixMethod, module="methods")
gin.external_configurable(methods.AdapterMethod, module="methods")
gin.external_configurable(encoder_decoder.EncoderDecoderModel, module="models")
gin.external_configurable(seqio.SentencePieceVocabulary, module="seqio")
gin.external_configurable(seqio.ByteVocabulary, module="seqio")

# The programs' jobs (`train`, `evaluate`, `infer`) are gin-configurable too.
# pylint: disable=unused-import,g-import-not-at-top,g-bad-import-order,wrong-import-position
from prompt_tuning.evaluation import job as _evaluation
from prompt_tuning.evaluation import predict as _infer
from prompt_tuning.training import trainer as _trainer
# pylint: enable=unused-import,g-import-not-at-top,g-bad-import-order,wrong-import-position


@gin.configurable("configured_model", module="configurables")
def _configured_model(model=gin.REQUIRED):
  return model


# The binding that makes `configured_model()` return the config's MODEL.
MODEL_BINDING = "configured_model.model = %MODEL"


def configured_model():
  """The `MODEL` of the gin config parsed now, which must hold MODEL_BINDING
  (pt-sweep's validation parses each point once, with it)."""
  return _configured_model()


def build_model(gin_files, bindings=()):
  """The `MODEL` that gin files (and bindings) configure, outside pt-train and
  pt-eval (demos, benchmarks, the Python API, tests). The caller's gin config,
  if any, is as it was afterwards (gin_utils.isolated)."""
  from prompt_tuning import gin_utils  # pylint: disable=g-import-not-at-top
  with gin_utils.isolated():
    gin_utils.parse(list(gin_files), list(bindings) + [MODEL_BINDING])
    return configured_model()
