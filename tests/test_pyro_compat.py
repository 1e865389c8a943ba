"""Pyro AIR state-dict conversion: exact round trips, Pyro's key set (a literal oracle written from
examples/air/air.py and modules.py), per-layer hand checks, numpy forward passes of the Pyro layout
against our Flax nets and guide, and validation errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers

from numpyro_air import AIRConfig, guide
from numpyro_air.core.nets import AIRLSTM, MLP, BaselinePredict, Decoder, Encoder, Predict
from numpyro_air.core.transform import image_to_window
from numpyro_air.pyro_compat import from_pyro_state_dict, pyro_state_dict_shapes, to_pyro_state_dict
from numpyro_air.train.svi import make_svi

# Tiny config with an embed net and every MLP hidden; tanh so no unit is dead.
EMBED = AIRConfig(
    image_size=8,
    window_size=4,
    z_what_size=3,
    rnn_hidden_size=5,
    encoder_net=(6,),
    decoder_net=(7,),
    predict_net=(4,),
    bl_predict_net=(3,),
    embed_net=(9, 6),
    non_linearity="Tanh",
    decoder_output_bias=-2.0,
    decoder_output_use_sigmoid=True,
    scale_prior_sd=0.2,
)
# No hidden layers anywhere (Pyro's main.py defaults for predict/bl_predict), no baselines.
BARE = AIRConfig(image_size=6, window_size=3, z_what_size=2, rnn_hidden_size=4, encoder_net=(), decoder_net=())

# Pyro's AIR(...).state_dict() for AIRConfig.tutorial(), in Pyro's order: own parameters
# (creation order), then rnn, encode, decode, predict, embed (Identity: none), bl_rnn, bl_predict,
# bl_embed (Identity: none). x 50x50 -> 2500, window 28x28 -> 784, z_what 50, LSTM 256.
TUTORIAL_KEYS = [
    ("z_where_loc_prior", (3,)),
    ("z_where_scale_prior", (3,)),
    ("h_init", (1, 256)),
    ("c_init", (1, 256)),
    ("bl_h_init", (1, 256)),
    ("bl_c_init", (1, 256)),
    ("z_where_init", (1, 3)),
    ("z_what_init", (1, 50)),
    ("rnn.weight_ih", (1024, 2554)),
    ("rnn.weight_hh", (1024, 256)),
    ("rnn.bias_ih", (1024,)),
    ("rnn.bias_hh", (1024,)),
    ("encode.mlp.seq.0.weight", (200, 784)),
    ("encode.mlp.seq.0.bias", (200,)),
    ("encode.mlp.seq.2.weight", (100, 200)),
    ("encode.mlp.seq.2.bias", (100,)),
    ("decode.mlp.seq.0.weight", (200, 50)),
    ("decode.mlp.seq.0.bias", (200,)),
    ("decode.mlp.seq.2.weight", (784, 200)),
    ("decode.mlp.seq.2.bias", (784,)),
    ("predict.mlp.seq.0.weight", (200, 256)),
    ("predict.mlp.seq.0.bias", (200,)),
    ("predict.mlp.seq.2.weight", (7, 200)),
    ("predict.mlp.seq.2.bias", (7,)),
    ("bl_rnn.weight_ih", (1024, 2554)),
    ("bl_rnn.weight_hh", (1024, 256)),
    ("bl_rnn.bias_ih", (1024,)),
    ("bl_rnn.bias_hh", (1024,)),
    ("bl_predict.seq.0.weight", (200, 256)),
    ("bl_predict.seq.0.bias", (200,)),
    ("bl_predict.seq.2.weight", (1, 200)),
    ("bl_predict.seq.2.bias", (1,)),
]

# The same for EMBED: embed MLPs (Linear, Tanh, Linear, Tanh) hold Linear layers at seq.0 and seq.2.
EMBED_KEYS = [
    ("z_where_loc_prior", (3,)),
    ("z_where_scale_prior", (3,)),
    ("h_init", (1, 5)),
    ("c_init", (1, 5)),
    ("bl_h_init", (1, 5)),
    ("bl_c_init", (1, 5)),
    ("z_where_init", (1, 3)),
    ("z_what_init", (1, 3)),
    ("rnn.weight_ih", (20, 13)),
    ("rnn.weight_hh", (20, 5)),
    ("rnn.bias_ih", (20,)),
    ("rnn.bias_hh", (20,)),
    ("encode.mlp.seq.0.weight", (6, 16)),
    ("encode.mlp.seq.0.bias", (6,)),
    ("encode.mlp.seq.2.weight", (6, 6)),
    ("encode.mlp.seq.2.bias", (6,)),
    ("decode.mlp.seq.0.weight", (7, 3)),
    ("decode.mlp.seq.0.bias", (7,)),
    ("decode.mlp.seq.2.weight", (16, 7)),
    ("decode.mlp.seq.2.bias", (16,)),
    ("predict.mlp.seq.0.weight", (4, 5)),
    ("predict.mlp.seq.0.bias", (4,)),
    ("predict.mlp.seq.2.weight", (7, 4)),
    ("predict.mlp.seq.2.bias", (7,)),
    ("embed.seq.0.weight", (9, 64)),
    ("embed.seq.0.bias", (9,)),
    ("embed.seq.2.weight", (6, 9)),
    ("embed.seq.2.bias", (6,)),
    ("bl_rnn.weight_ih", (20, 13)),
    ("bl_rnn.weight_hh", (20, 5)),
    ("bl_rnn.bias_ih", (20,)),
    ("bl_rnn.bias_hh", (20,)),
    ("bl_predict.seq.0.weight", (3, 5)),
    ("bl_predict.seq.0.bias", (3,)),
    ("bl_predict.seq.2.weight", (1, 3)),
    ("bl_predict.seq.2.bias", (1,)),
    ("bl_embed.seq.0.weight", (9, 64)),
    ("bl_embed.seq.0.bias", (9,)),
    ("bl_embed.seq.2.weight", (6, 9)),
    ("bl_embed.seq.2.bias", (6,)),
]


# ----------------------------------------------------------------------------- helpers
def random_params(config: AIRConfig, seed: int = 0) -> dict:
    """Our params tree (structure from ``svi.init``, traced abstractly) filled with N(0, 1) float32."""
    svi = make_svi(config)
    n = config.image_size
    state = jax.eval_shape(svi.init, jax.random.PRNGKey(0), jnp.zeros((2, n, n), jnp.float32))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), svi.get_params(state))


def random_pyro(keys: list, config: AIRConfig, seed: int = 1) -> dict:
    """A Pyro-layout state dict with N(0, 1) float32 weights and the config's prior buffers."""
    rng = np.random.default_rng(seed)
    d = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in keys}
    c = config
    d["z_where_loc_prior"] = np.array([c.scale_prior_mean, c.pos_prior_mean, c.pos_prior_mean], np.float32)
    d["z_where_scale_prior"] = np.array([c.scale_prior_sd, c.pos_prior_sd, c.pos_prior_sd], np.float32)
    return d


def assert_trees_bit_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype == np.float32, path
        assert x.shape == y.shape and x.tobytes() == y.tobytes(), jax.tree_util.keystr(path)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def pyro_mlp(d: dict, prefix: str, x: np.ndarray, nl, output_nl: bool = False) -> np.ndarray:
    """Pyro's MLP: x @ W.T + b for seq.0, seq.2, ... with ``nl`` between (and after, if output_nl)."""
    i = 0
    while f"{prefix}.seq.{i}.weight" in d:
        x = x @ d[f"{prefix}.seq.{i}.weight"].T + d[f"{prefix}.seq.{i}.bias"]
        i += 2
        if f"{prefix}.seq.{i}.weight" in d or output_nl:
            x = nl(x)
    return x


def pyro_lstm(d: dict, prefix: str, x: np.ndarray, h: np.ndarray, c: np.ndarray):
    """torch.nn.LSTMCell: gates = x W_ih^T + b_ih + h W_hh^T + b_hh split (i, f, g, o)."""
    gates = x @ d[prefix + ".weight_ih"].T + d[prefix + ".bias_ih"] + h @ d[prefix + ".weight_hh"].T
    i, f, g, o = np.split(gates + d[prefix + ".bias_hh"], 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def close(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------- key set / shapes
def test_tutorial_key_set_and_shapes_match_pyro():
    config = AIRConfig.tutorial()
    assert list(pyro_state_dict_shapes(config).items()) == TUTORIAL_KEYS
    exported = to_pyro_state_dict(random_params(config), config)
    assert [(k, v.shape) for k, v in exported.items()] == TUTORIAL_KEYS
    assert all(v.dtype == np.float32 for v in exported.values())

    def count(prefix: str) -> int:
        """Parameters under ``prefix`` (compared with pyro_air.md section 4.5)."""
        return sum(v.size for k, v in exported.items() if k.startswith(prefix + "."))

    assert count("rnn") == count("bl_rnn") == 2_879_488
    assert (count("encode"), count("decode"), count("predict"), count("bl_predict")) == (
        177_100,
        167_784,
        52_807,
        51_601,
    )


def test_embed_config_key_set_and_shapes_match_pyro():
    exported = to_pyro_state_dict(random_params(EMBED), EMBED)
    assert [(k, v.shape) for k, v in exported.items()] == EMBED_KEYS


def test_no_baselines_still_exports_pyro_baseline_nets_as_zeros():
    config = EMBED.replace(use_baselines=False)
    params = random_params(config)
    assert not any(k.startswith("bl_") for k in params)
    exported = to_pyro_state_dict(params, config)
    assert [(k, v.shape) for k, v in exported.items()] == EMBED_KEYS
    assert all(not v.any() for k, v in exported.items() if k.startswith("bl_"))
    assert_trees_bit_equal(from_pyro_state_dict(exported, config), params)
    # a Pyro checkpoint trained with baselines imports into a baseline-free config (bl_* dropped)
    assert not any(k.startswith("bl_") for k in from_pyro_state_dict(random_pyro(EMBED_KEYS, config), config))


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("config", [AIRConfig.tutorial(), EMBED, BARE], ids=["tutorial", "embed", "bare"])
def test_round_trip_ours_pyro_ours_is_exact(config):
    params = random_params(config, seed=3)
    assert_trees_bit_equal(from_pyro_state_dict(to_pyro_state_dict(params, config), config), params)


@pytest.mark.parametrize("config, keys", [(AIRConfig.tutorial(), TUTORIAL_KEYS), (EMBED, EMBED_KEYS)], ids=["tutorial", "embed"])
def test_round_trip_pyro_ours_pyro_is_exact(config, keys):
    d = random_pyro(keys, config)
    back = to_pyro_state_dict(from_pyro_state_dict(d, config), config)
    assert list(back) == [k for k, _ in keys]
    for k, v in d.items():
        assert back[k].dtype == np.float32 and back[k].tobytes() == v.tobytes(), k
        assert back[k].flags.c_contiguous and back[k].flags.writeable, k


# ----------------------------------------------------------------------------- hand-checked layers
def test_linear_weight_is_transposed_kernel_and_bias_copied():
    d = random_pyro(EMBED_KEYS, EMBED)
    d["predict.mlp.seq.2.weight"] = np.arange(28, dtype=np.float32).reshape(7, 4)  # (out, in)
    d["predict.mlp.seq.2.bias"] = np.arange(7, dtype=np.float32) - 3
    dense = from_pyro_state_dict(d, EMBED)["predict$params"]["MLP_0"]["Dense_1"]
    kernel = np.asarray(dense["kernel"])
    assert kernel.shape == (4, 7)
    assert kernel[0].tolist() == [0, 4, 8, 12, 16, 20, 24] and kernel[3, 6] == 27
    assert np.asarray(dense["bias"]).tolist() == [-3, -2, -1, 0, 1, 2, 3]
    # the embed MLP: Linear at seq.2 is our Dense_1
    assert np.array_equal(from_pyro_state_dict(d, EMBED)["embed$params"]["Dense_1"]["kernel"], d["embed.seq.2.weight"].T)


def test_lstm_weight_ih_split_at_embedding_size_and_biases():
    d = random_pyro(EMBED_KEYS, EMBED)
    d["rnn.weight_ih"] = np.arange(20 * 13, dtype=np.float32).reshape(20, 13)  # cols: emb 6 | where 3 | what 3 | pres
    rnn = from_pyro_state_dict(d, EMBED)["rnn$params"]
    assert np.array_equal(rnn["img"]["kernel"], d["rnn.weight_ih"][:, :6].T)
    assert np.array_equal(rnn["lat"]["kernel"], d["rnn.weight_ih"][:, 6:].T)
    assert np.asarray(rnn["lat"]["kernel"])[0, :3].tolist() == [6, 19, 32]  # z_where[0] column
    assert np.asarray(rnn["lat"]["kernel"])[6, :2].tolist() == [12, 25]  # z_pres column
    assert np.array_equal(rnn["img"]["bias"], d["rnn.bias_ih"])
    assert np.array_equal(rnn["hh"]["bias"], d["rnn.bias_hh"])
    assert np.array_equal(rnn["hh"]["kernel"], d["rnn.weight_hh"].T)
    assert "bias" not in rnn["lat"]


# ----------------------------------------------------------------------------- forward passes
def test_each_layer_type_computes_pyros_function():
    d = random_pyro(EMBED_KEYS, EMBED, seed=5)
    p = from_pyro_state_dict(d, EMBED)
    rng = np.random.default_rng(6)
    x, h, c = (rng.standard_normal(s).astype(np.float32) for s in ((4, 64), (4, 5), (4, 5)))
    lat = rng.standard_normal((4, 7)).astype(np.float32)  # (z_where 3, z_what 3, z_pres 1)
    emb = pyro_mlp(d, "embed", x, np.tanh, output_nl=True)
    close(MLP(EMBED.embed_net, "tanh", output_nl=True).apply({"params": p["embed$params"]}, x), emb)
    ours = AIRLSTM(5).apply({"params": p["rnn$params"]}, emb, lat, (h, c))
    for a, b in zip(ours, pyro_lstm(d, "rnn", np.concatenate([emb, lat], 1), h, c)):
        close(a, b)
    out = pyro_mlp(d, "predict.mlp", h, np.tanh)  # Pyro: sigmoid(out[0]), out[1:4], softplus(out[4:7])
    logit, loc, scale = Predict((4,), "tanh").apply({"params": p["predict$params"]}, h)
    close(jax.nn.sigmoid(logit), sigmoid(out[:, 0]))
    close(loc, out[:, 1:4])
    close(scale, softplus(out[:, 4:7]))
    win = rng.uniform(size=(4, 16)).astype(np.float32)
    out = pyro_mlp(d, "encode.mlp", win, np.tanh)  # Pyro: out[:, :Z], softplus(out[:, Z:])
    what_loc, what_scale = Encoder((6,), 3, "tanh").apply({"params": p["encode$params"]}, win)
    close(what_loc, out[:, :3])
    close(what_scale, softplus(out[:, 3:]))
    z = lat[:, 3:6]
    decoded = Decoder((7,), 16, -2.0, True, "tanh").apply({"params": p["decode$params"]}, z)
    close(decoded, sigmoid(pyro_mlp(d, "decode.mlp", z, np.tanh) - 2.0))
    close(
        BaselinePredict((3,), "tanh").apply({"params": p["bl_predict$params"]}, h),
        pyro_mlp(d, "bl_predict", h, np.tanh)[:, 0],
    )


def test_guide_with_imported_params_matches_numpy_pyro_guide():
    """Greedy guide (deterministic) on imported params vs Pyro's guide_step/baseline_step in numpy,
    fed our step-by-step latents: checks the latent order into both LSTMs end to end."""
    config = EMBED
    d = random_pyro(EMBED_KEYS, config, seed=7)
    rng = np.random.default_rng(8)
    images = rng.uniform(size=(3, 8, 8)).astype(np.float32)
    fn = handlers.substitute(handlers.seed(guide, 0), data=from_pyro_state_dict(d, config))
    out = {k: np.asarray(v) for k, v in fn(images, config, greedy=True).items()}
    x = images.reshape(3, 64)
    emb, bl_emb = pyro_mlp(d, "embed", x, np.tanh, True), pyro_mlp(d, "bl_embed", x, np.tanh, True)
    h, c, bl_h, bl_c = (np.broadcast_to(d[k], (3, 5)) for k in ("h_init", "c_init", "bl_h_init", "bl_c_init"))
    where, what = np.broadcast_to(d["z_where_init"], (3, 3)), np.broadcast_to(d["z_what_init"], (3, 3))
    pres = np.ones((3, 1), np.float32)
    for t in range(config.num_steps):
        h, c = pyro_lstm(d, "rnn", np.concatenate([emb, where, what, pres], 1), h, c)
        o = pyro_mlp(d, "predict.mlp", h, np.tanh)
        bl_h, bl_c = pyro_lstm(d, "bl_rnn", np.concatenate([bl_emb, where, what, pres], 1), bl_h, bl_c)
        close(out["baseline"][:, t], pyro_mlp(d, "bl_predict", bl_h, np.tanh)[:, 0] * pres[:, 0])
        close(out["pres_prob"][:, t], sigmoid(o[:, 0]) * pres[:, 0])
        close(out["z_where_loc"][:, t], o[:, 1:4] + d["z_where_loc_prior"])
        where, pres = out["z_where"][:, t], out["z_pres"][:, t : t + 1]
        x_att = np.asarray(image_to_window(jnp.asarray(where), jnp.asarray(images), 4)).reshape(3, 16)
        close(out["z_what"][:, t], pyro_mlp(d, "encode.mlp", x_att, np.tanh)[:, :3])
        what = out["z_what"][:, t]


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("buffer, index", [("z_where_loc_prior", 0), ("z_where_scale_prior", 2)])
def test_prior_buffer_mismatch_raises(buffer, index):
    d = random_pyro(EMBED_KEYS, EMBED)
    from_pyro_state_dict(d, EMBED)  # agrees
    d[buffer] = d[buffer].copy()
    d[buffer][index] += 0.5
    with pytest.raises(ValueError, match=buffer):
        from_pyro_state_dict(d, EMBED)


def test_exported_buffers_come_from_config_and_other_config_is_refused():
    config = EMBED.replace(scale_prior_mean=2.5, pos_prior_mean=0.25, pos_prior_sd=0.75)
    d = to_pyro_state_dict(random_params(config), config)
    assert d["z_where_loc_prior"].tolist() == [2.5, 0.25, 0.25]
    assert np.array_equal(d["z_where_scale_prior"], np.array([0.2, 0.75, 0.75], np.float32))
    with pytest.raises(ValueError, match="z_where_loc_prior"):
        from_pyro_state_dict(d, EMBED)


def test_missing_unexpected_and_misshaped_keys_raise():
    good = random_pyro(EMBED_KEYS, EMBED)
    missing = {k: v for k, v in good.items() if k != "bl_predict.seq.2.bias"}
    with pytest.raises(ValueError, match=r"missing.*bl_predict\.seq\.2\.bias"):
        from_pyro_state_dict(missing, EMBED)
    with pytest.raises(ValueError, match=r"unexpected.*embed\.seq\.4\.weight"):
        from_pyro_state_dict({**good, "embed.seq.4.weight": np.zeros((6, 6), np.float32)}, EMBED)
    with pytest.raises(ValueError, match=r"rnn\.weight_ih.*\(13, 20\)"):
        from_pyro_state_dict({**good, "rnn.weight_ih": good["rnn.weight_ih"].T}, EMBED)
    with pytest.raises(ValueError, match="embed.seq.0.weight"):  # embed net present, config without one
        from_pyro_state_dict(good, EMBED.replace(embed_net=None))


def test_export_validates_our_params():
    params = random_params(EMBED)
    bad = {**params, "rnn$params": {**params["rnn$params"], "lat": {}}}
    with pytest.raises(ValueError, match="missing.*rnn\\$params/lat/kernel"):
        to_pyro_state_dict(bad, EMBED)
    with pytest.raises(ValueError, match="unexpected.*extra"):
        to_pyro_state_dict({**params, "extra": np.zeros(1, np.float32)}, EMBED)
    bad = {**params, "z_what_init": np.zeros((1, 4), np.float32)}
    with pytest.raises(ValueError, match="z_what_init"):
        to_pyro_state_dict(bad, EMBED)
