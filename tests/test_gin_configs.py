"""Every shipped model config builds T5X's published dimensions, and overrides work."""
import gin
import pytest

from prompt_tuning import configurables  # pylint: disable=unused-import
from prompt_tuning import gin_utils
from prompt_tuning.model import t5

# (emb, heads, head_dim, mlp, encoder layers, decoder layers) from T5X_FORMAT.md.
T5_1_1 = {"small": (512, 6, 64, 1024, 8, 8), "base": (768, 12, 64, 2048, 12, 12),
          "large": (1024, 16, 64, 2816, 24, 24), "xl": (2048, 32, 64, 5120, 24, 24),
          "xxl": (4096, 64, 64, 10240, 24, 24)}
T5_1_0 = {"small": (512, 8, 64, 2048, 6, 6), "base": (768, 12, 64, 3072, 12, 12),
          "large": (1024, 16, 64, 4096, 24, 24), "3b": (1024, 32, 128, 16384, 24, 24),
          "11b": (1024, 128, 128, 65536, 24, 24)}


@gin.configurable("config_under_test")
def _config(config=gin.REQUIRED):
  return config


def build(files, bindings=()):
  gin.clear_config()
  gin_utils.parse(files, list(bindings) + ["config_under_test.config = @t5.T5Config()"])
  try:
    return _config()
  finally:
    gin.clear_config()


def dims(config: t5.T5Config):
  return (config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim,
          config.num_encoder_layers, config.num_decoder_layers)


@pytest.mark.parametrize("family,size", [("t5_1_1", s) for s in T5_1_1] +
                         [("t5_1_0", s) for s in T5_1_0] + [("mt5", s) for s in T5_1_1])
def test_published_sizes(family, size):
  config = build([f"models/{family}_{size}_prompt.gin"])
  assert dims(config) == (T5_1_0 if family == "t5_1_0" else T5_1_1)[size]
  assert config.vocab_size == (250112 if family == "mt5" else 32128)
  assert config.logits_via_embedding == (family == "t5_1_0")
  assert tuple(config.mlp_activations) == (("relu",) if family == "t5_1_0" else ("gelu", "linear"))
  assert (config.relative_attention_num_buckets,
          config.relative_attention_max_distance) == (32, 128)


def test_overrides_win_over_files():
  config = build(["models/t5_1_1_base_prompt.gin"],
                 ["EMBED_DIM = 16", "NUM_HEADS = 2", "MLP_DIM = 8", "NUM_ENCODER_LAYERS = 1",
                  "RELATIVE_ATTENTION_NUM_BUCKETS = 4", "DROPOUT_RATE = 0.0"])
  assert dims(config) == (16, 2, 64, 8, 1, 12)
  assert config.relative_attention_num_buckets == 4 and config.dropout_rate == 0.0


def test_user_search_path_first(tmp_path):
  (tmp_path / "models").mkdir()
  (tmp_path / "models" / "mine.gin").write_text("include 'models/t5_1_1_small_prompt.gin'\n"
                                                "EMBED_DIM = 24\n")
  gin.clear_config()
  gin_utils.parse(["models/mine.gin"], ["config_under_test.config = @t5.T5Config()"],
                  search_paths=[str(tmp_path)])
  assert _config().emb_dim == 24
  gin.clear_config()


def test_rewrite_gin_args():
  assert gin_utils.rewrite_gin_args(["p", "--gin.A=1", "--gin.B", "'x'", "--gin_file=f"]) == [
      "p", "--gin_bindings=A = 1", "--gin_bindings=B = 'x'", "--gin_file=f"]


def test_missing_gin_file_is_a_config_error():
  with pytest.raises(gin_utils.ConfigError, match="no_such.gin"):
    build(["models/no_such.gin"])
