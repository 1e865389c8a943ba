"""Convert parameters to and from the ``state_dict()`` of Pyro's ``AIR`` module (examples/air/air.py).

numpy only (no torch): a Pyro state dict is a ``{key: np.ndarray}`` mapping, e.g. obtained with
``{k: v.numpy() for k, v in air.state_dict().items()}``; the reverse direction is loaded with
``air.load_state_dict({k: torch.from_numpy(v) for k, v in d.items()}, strict=True)``.

Layout of Pyro's AIR state dict (own parameters first, then child modules in creation order):

- ``z_where_loc_prior`` / ``z_where_scale_prior`` (3,): fixed (``requires_grad=False``) prior of
  z_where, ``[scale_prior_mean, pos_prior_mean, pos_prior_mean]`` and ``[scale_prior_sd, pos_prior_sd,
  pos_prior_sd]``; they come from the config (:func:`numpyro_air.core.model.prior_loc_scale`), not from
  our params.
- ``h_init``, ``c_init``, ``bl_h_init``, ``bl_c_init`` (1, H); ``z_where_init`` (1, 3); ``z_what_init``
  (1, Z): identical in both layouts.
- ``rnn`` / ``bl_rnn``: ``torch.nn.LSTMCell`` with ``weight_ih`` (4H, E+3+Z+1), ``weight_hh`` (4H, H),
  ``bias_ih``, ``bias_hh`` (4H,), gates (i, f, g, o) as ours. Its input is concat(embedding (E,),
  z_where, z_what, z_pres), ours splits it into the image block ``img`` and the latent block ``lat``
  whose input is concat(z_where, z_what, z_pres) -- the same order -- so ``weight_ih[:, :E]`` is
  ``img.kernel.T`` and ``weight_ih[:, E:]`` is ``lat.kernel.T``; ``bias_ih`` is ``img.bias`` and
  ``weight_hh``/``bias_hh`` are ``hh.kernel.T``/``hh.bias``.
- MLPs are ``nn.Sequential`` named ``seq`` whose Linear layers sit at the even indices 0, 2, 4, ...
  (a parameter-free non-linearity follows every Linear but the last; the embed MLP also has one
  after its last): ``encode.mlp.seq.*``, ``decode.mlp.seq.*``, ``predict.mlp.seq.*``,
  ``bl_predict.seq.*`` and, only with ``embed_net``, ``embed.seq.*`` / ``bl_embed.seq.*`` (otherwise
  the embeddings are parameter-free identities). Linear ``weight`` (out, in) is our Flax ``kernel``
  (in, out) transposed; ``bias`` is the same.

No output permutation is needed: Pyro's Predict reads its 7 outputs as [z_pres, z_where loc offset
(3), z_where scale (3)] (sigmoid resp. softplus applied after), ours as [z_pres logit, loc offset (3),
scale (3)] (softplus on the scale, sigmoid of the logit = Pyro's probability); Pyro's Encoder reads
[loc (Z), softplus -> scale (Z)], as ours; z_where is (s, x, y) in both.

Pyro always builds the baseline nets, even with ``use_baselines=False``. With that config the
importer checks and then drops the ``bl_*`` entries (our params have none) and the exporter writes
them as zeros (unused by Pyro without baselines, but required by ``strict=True``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from .core.config import AIRConfig

Shape = tuple[int, ...]
Path = tuple[str, ...]
PRIOR_BUFFERS = ("z_where_loc_prior", "z_where_scale_prior")


@dataclass(frozen=True)
class _Param:
    """A parameter stored identically under ``pyro`` (a state-dict key) and ``ours`` (a tree path)."""

    pyro: str
    ours: Path
    shape: Shape

    def pyro_shapes(self) -> dict[str, Shape]:
        return {self.pyro: self.shape}

    def our_shapes(self) -> dict[Path, Shape]:
        return {self.ours: self.shape}

    def to_ours(self, d: Mapping[str, np.ndarray]) -> dict[Path, np.ndarray]:
        return {self.ours: d[self.pyro]}

    def to_pyro(self, flat: Mapping[Path, np.ndarray]) -> dict[str, np.ndarray]:
        return {self.pyro: flat[self.ours]}


@dataclass(frozen=True)
class _Linear:
    """torch ``Linear`` ``<pyro>.weight`` (out, in), ``<pyro>.bias`` (out,) <-> Flax ``Dense`` at
    ``ours`` with ``kernel`` (in, out) = weight.T and ``bias`` (out,)."""

    pyro: str
    ours: Path
    n_in: int
    n_out: int

    def pyro_shapes(self) -> dict[str, Shape]:
        return {self.pyro + ".weight": (self.n_out, self.n_in), self.pyro + ".bias": (self.n_out,)}

    def our_shapes(self) -> dict[Path, Shape]:
        return {self.ours + ("bias",): (self.n_out,), self.ours + ("kernel",): (self.n_in, self.n_out)}

    def to_ours(self, d: Mapping[str, np.ndarray]) -> dict[Path, np.ndarray]:
        w, b = d[self.pyro + ".weight"], d[self.pyro + ".bias"]
        return {self.ours + ("bias",): b, self.ours + ("kernel",): w.T}

    def to_pyro(self, flat: Mapping[Path, np.ndarray]) -> dict[str, np.ndarray]:
        kernel, bias = flat[self.ours + ("kernel",)], flat[self.ours + ("bias",)]
        return {self.pyro + ".weight": kernel.T, self.pyro + ".bias": bias}


@dataclass(frozen=True)
class _LSTM:
    """torch ``LSTMCell(n_img + n_lat, hidden)`` <-> our ``AIRLSTM`` (``img``, ``lat``, ``hh`` Dense)."""

    pyro: str
    ours: Path
    n_img: int
    n_lat: int
    hidden: int

    def pyro_shapes(self) -> dict[str, Shape]:
        g, p = 4 * self.hidden, self.pyro
        return {
            p + ".weight_ih": (g, self.n_img + self.n_lat),
            p + ".weight_hh": (g, self.hidden),
            p + ".bias_ih": (g,),
            p + ".bias_hh": (g,),
        }

    def our_shapes(self) -> dict[Path, Shape]:
        g, o = 4 * self.hidden, self.ours
        return {
            o + ("hh", "bias"): (g,),
            o + ("hh", "kernel"): (self.hidden, g),
            o + ("img", "bias"): (g,),
            o + ("img", "kernel"): (self.n_img, g),
            o + ("lat", "kernel"): (self.n_lat, g),
        }

    def to_ours(self, d: Mapping[str, np.ndarray]) -> dict[Path, np.ndarray]:
        p, o, w_ih = self.pyro, self.ours, d[self.pyro + ".weight_ih"]
        return {
            o + ("hh", "bias"): d[p + ".bias_hh"],
            o + ("hh", "kernel"): d[p + ".weight_hh"].T,
            o + ("img", "bias"): d[p + ".bias_ih"],
            o + ("img", "kernel"): w_ih[:, : self.n_img].T,  # embedding columns
            o + ("lat", "kernel"): w_ih[:, self.n_img :].T,  # (z_where, z_what, z_pres) columns
        }

    def to_pyro(self, flat: Mapping[Path, np.ndarray]) -> dict[str, np.ndarray]:
        p, o = self.pyro, self.ours
        w_ih = np.concatenate([flat[o + ("img", "kernel")].T, flat[o + ("lat", "kernel")].T], axis=1)
        return {
            p + ".weight_ih": w_ih,
            p + ".weight_hh": flat[o + ("hh", "kernel")].T,
            p + ".bias_ih": flat[o + ("img", "bias")],
            p + ".bias_hh": flat[o + ("hh", "bias")],
        }


def _mlp(pyro: str, ours: Path, n_in: int, sizes: tuple[int, ...]) -> list[_Linear]:
    """Pyro ``MLP`` ``<pyro>.seq.{0,2,4,..}`` <-> our ``MLP`` ``<ours>/Dense_{0,1,2,..}``."""
    ins = (n_in,) + tuple(sizes[:-1])
    return [_Linear(f"{pyro}.seq.{2 * i}", ours + (f"Dense_{i}",), a, b) for i, (a, b) in enumerate(zip(ins, sizes))]


def _recurrent(prefix: str, config: AIRConfig) -> list:
    """Initial state, embed MLP (if any) and LSTM of the guide (prefix "") or the baseline ("bl_")."""
    H, x_pixels = config.rnn_hidden_size, config.image_size**2
    specs: list = [_Param(prefix + name, (prefix + name,), (1, H)) for name in ("h_init", "c_init")]
    n_img = x_pixels
    if config.embed_net is not None:
        specs += _mlp(prefix + "embed", (prefix + "embed$params",), x_pixels, config.embed_net)
        n_img = config.embed_net[-1]
    specs.append(_LSTM(prefix + "rnn", (prefix + "rnn$params",), n_img, 3 + config.z_what_size + 1, H))
    return specs


def _guide_specs(config: AIRConfig) -> list:
    """Every non-baseline parameter of the guide and the decoder."""
    H, Z, w_pixels = config.rnn_hidden_size, config.z_what_size, config.window_size**2
    return _recurrent("", config) + [
        _Param("z_where_init", ("z_where_init",), (1, 3)),
        _Param("z_what_init", ("z_what_init",), (1, Z)),
        *_mlp("encode.mlp", ("encode$params", "MLP_0"), w_pixels, config.encoder_net + (2 * Z,)),
        *_mlp("decode.mlp", ("decode$params", "MLP_0"), Z, config.decoder_net + (w_pixels,)),
        *_mlp("predict.mlp", ("predict$params", "MLP_0"), H, config.predict_net + (7,)),
    ]


def _baseline_specs(config: AIRConfig) -> list:
    """Every baseline parameter (present in Pyro's state dict whatever ``use_baselines``)."""
    H, bl_predict = config.rnn_hidden_size, ("bl_predict$params", "MLP_0")
    return _recurrent("bl_", config) + _mlp("bl_predict", bl_predict, H, config.bl_predict_net + (1,))


def _pyro_order(key: str) -> int:
    """Stable-sort key giving Pyro's state-dict order: own parameters, then children in creation order
    (within a child, the specs already list keys in Pyro's order)."""
    own = PRIOR_BUFFERS + ("h_init", "c_init", "bl_h_init", "bl_c_init", "z_where_init", "z_what_init")
    children = ("rnn", "encode", "decode", "predict", "embed", "bl_rnn", "bl_predict", "bl_embed")
    if key in own:
        return own.index(key)
    return len(own) + children.index(key.split(".")[0])


def _prior_buffers(config: AIRConfig) -> dict[str, np.ndarray]:
    """Pyro's fixed z_where prior, float32 (3,) each, ordered (s, x, y)."""
    loc = [config.scale_prior_mean, config.pos_prior_mean, config.pos_prior_mean]
    sd = [config.scale_prior_sd, config.pos_prior_sd, config.pos_prior_sd]
    return {PRIOR_BUFFERS[0]: np.asarray(loc, np.float32), PRIOR_BUFFERS[1]: np.asarray(sd, np.float32)}


def _check_pyro_shaped(config: AIRConfig) -> None:
    """Pyro's AIR is square, grayscale, all-MLP and reads the image (no DAIR): refuse what it cannot hold."""
    extras = [
        n
        for n in ("conv_encoder", "conv_decoder", "conv_embed", "broadcast_decoder", "template_decoder")
        if getattr(config, n) is not None
    ]
    if config.composition != "add":
        extras.append(f'composition="{config.composition}"')
    if config.object_colour != "pixel":
        extras.append(f'object_colour="{config.object_colour}"')
    if config.guide_input != "image":
        extras.append(f'guide_input="{config.guide_input}" (DAIR), glimpse_input="{config.glimpse_input}"')
    if config.channels != 1 or config.width != config.height or extras:
        raise ValueError(
            "Pyro's AIR has square grayscale canvases, added objects, AIR's guide and MLPs only; this config has "
            f"{config.height}x{config.width}x{config.channels} images" + (f" and {', '.join(extras)}" if extras else "")
        )


def pyro_state_dict_shapes(config: AIRConfig) -> dict[str, Shape]:
    """Keys and shapes of Pyro's ``AIR(...).state_dict()`` for ``config``, in Pyro's order."""
    _check_pyro_shaped(config)
    shapes: dict[str, Shape] = {k: (3,) for k in PRIOR_BUFFERS}
    for spec in _guide_specs(config) + _baseline_specs(config):
        shapes.update(spec.pyro_shapes())
    return {k: shapes[k] for k in sorted(shapes, key=_pyro_order)}


def _check_entries(kind: str, got: Mapping, expected: Mapping) -> None:
    """ValueError naming the first missing key, unexpected key or wrong shape."""
    missing = [k for k in expected if k not in got]
    if missing:
        raise ValueError(f"{kind}: missing key(s) {missing}")
    unexpected = [k for k in got if k not in expected]
    if unexpected:
        raise ValueError(f"{kind}: unexpected key(s) {unexpected}")
    for k, shape in expected.items():
        if tuple(np.shape(got[k])) != tuple(shape):
            raise ValueError(f"{kind}: key {k!r} has shape {tuple(np.shape(got[k]))}, expected {tuple(shape)}")


def _check_buffers(d: Mapping[str, np.ndarray], config: AIRConfig) -> None:
    """ValueError naming the prior buffer whose value disagrees with the config."""
    for name, want in _prior_buffers(config).items():
        got = np.asarray(d[name], np.float32)
        if not np.allclose(got, want, rtol=1e-6, atol=1e-7):
            raise ValueError(f"Pyro state dict: buffer {name!r} = {got.tolist()} disagrees with the config ({want.tolist()})")


def _unflatten(flat: Mapping[Path, np.ndarray]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = jnp.asarray(leaf)
    return tree


def _flatten(tree: Mapping, prefix: Path = ()) -> dict[Path, object]:
    flat: dict[Path, object] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, prefix + (k,)))
        else:
            flat[prefix + (k,)] = v
    return flat


def _joined(flat: Mapping[Path, object]) -> dict[str, object]:
    """Tree paths as "a/b/c" strings (for error messages)."""
    return {"/".join(path): v for path, v in flat.items()}


def _our_specs(config: AIRConfig) -> list:
    _check_pyro_shaped(config)
    return _guide_specs(config) + (_baseline_specs(config) if config.use_baselines else [])


def from_pyro_state_dict(d: Mapping[str, np.ndarray], config: AIRConfig) -> dict:
    """Pyro ``AIR.state_dict()`` as numpy arrays -> our params pytree (``svi.get_params(state)``
    layout: nested dicts of float32 jax arrays). Raises ValueError naming the key for a missing
    key, an unexpected key, a wrong shape, or a prior buffer that disagrees with ``config``."""
    _check_entries("Pyro state dict", d, pyro_state_dict_shapes(config))
    _check_buffers(d, config)
    arrays = {k: np.asarray(v, np.float32) for k, v in d.items()}
    flat: dict[Path, np.ndarray] = {}
    for spec in _our_specs(config):
        flat.update(spec.to_ours(arrays))
    return _unflatten(flat)


def to_pyro_state_dict(params: Mapping, config: AIRConfig) -> dict[str, np.ndarray]:
    """Our params pytree -> ``{key: float32 np.ndarray}`` that Pyro's ``AIR.load_state_dict(...,
    strict=True)`` accepts (exact keys and shapes, Pyro's order). The prior buffers are written from
    ``config``; without baselines the ``bl_*`` entries Pyro still expects are zeros."""
    specs = _our_specs(config)
    expected = {path: shape for spec in specs for path, shape in spec.our_shapes().items()}
    flat = _flatten(params)
    _check_entries("params", _joined(flat), _joined(expected))
    arrays = {p: np.asarray(v, np.float32) for p, v in flat.items()}
    out: dict[str, np.ndarray] = dict(_prior_buffers(config))
    for spec in specs:
        out.update({k: np.array(v, np.float32, order="C") for k, v in spec.to_pyro(arrays).items()})
    if not config.use_baselines:  # Pyro builds the baseline nets anyway; strict loading needs them
        for spec in _baseline_specs(config):
            out.update({k: np.zeros(shape, np.float32) for k, shape in spec.pyro_shapes().items()})
    return {k: out[k] for k in sorted(out, key=_pyro_order)}
