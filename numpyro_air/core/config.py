"""Model and guide configuration: every option of Pyro's AIR example, with Pyro's defaults.

``AIRConfig()`` is Pyro's ``main.py`` default (which does *not* learn well, see pyro#637);
``AIRConfig.tutorial()`` is the working recipe of the Pyro AIR tutorial.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Tuple

NON_LINEARITIES = ("relu", "elu", "leaky_relu", "tanh", "sigmoid", "softplus", "gelu", "silu", "selu")
ANNEAL_MODES = ("none", "lin", "exp")
GUIDE_INPUTS = ("image", "difference")
GLIMPSE_INPUTS = ("image", "residual", "both")
COMPOSITIONS = ("add", "over")  # how objects combine on the canvas (AIRConfig.composition)
OBJECT_COLOURS = ("pixel", "single")  # what the decoder draws in colour (AIRConfig.object_colour)
PRESENCE_ESTIMATORS = ("nvil", "vimco", "rws", "concrete")
CHANNELS = (1, 3)  # grayscale, RGB
COMPUTE_DTYPES = ("float32", "bfloat16")  # matmul operands (accumulation is always float32)

# Pyro's --non-linearity takes a torch.nn class name; accept those spellings too.
_TORCH_NAMES = {
    "ReLU": "relu",
    "ELU": "elu",
    "LeakyReLU": "leaky_relu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Softplus": "softplus",
    "GELU": "gelu",
    "SiLU": "silu",
    "SELU": "selu",
}


def _positive_int(v) -> bool:
    """Whether ``v`` is an int (not a bool) greater than 0."""
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _sizes(value, name: str) -> Tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value)
    except TypeError as e:
        raise ValueError(f"{name} must be a sequence of positive ints, got {value!r}") from e
    if any(s <= 0 for s in sizes):
        raise ValueError(f"{name} must contain positive sizes only, got {sizes}")
    return sizes


@dataclass(frozen=True)
class AIRConfig:
    """Frozen configuration of the AIR model, guide and baselines.

    Shapes: images are :attr:`image_shape` per scene, i.e. (B, H, W) grayscale or (B, H, W, C)
    colour (channels last), with H = ``image_size`` and W = ``image_width`` (default: square);
    windows are (B, w, w) or (B, w, w, C) with w = ``window_size``; z_where is (B, 3) ordered
    (s, x, y); z_what is (B, z_what_size).
    """

    # --- structure (Pyro: -t, x_size, --window-size, --encoder-latent-size, --rnn-hidden-size)
    num_steps: int = 3
    image_size: int = 50  # canvas height H (Pyro's square x_size)
    window_size: int = 28  # side of the square attention window, at most min(H, W)
    z_what_size: int = 50
    rnn_hidden_size: int = 256
    # canvas width W (None: square, W = image_size) and channels C (1 grayscale, 3 RGB)
    image_width: Optional[int] = None
    channels: int = 1
    # --- networks (hidden sizes; Pyro: --encoder-net, --decoder-net, --predict-net,
    #     --embed-net, --bl-predict-net, --non-linearity)
    encoder_net: Tuple[int, ...] = (200,)
    decoder_net: Tuple[int, ...] = (200,)
    predict_net: Tuple[int, ...] = ()
    embed_net: Optional[Tuple[int, ...]] = None
    bl_predict_net: Tuple[int, ...] = ()
    non_linearity: str = "relu"
    decoder_output_bias: Optional[float] = None
    decoder_output_use_sigmoid: bool = False
    # --- masking / baselines (Pyro: --no-masking, --no-baselines, --baseline-scalar)
    use_masking: bool = True
    use_baselines: bool = True
    baseline_scalar: Optional[float] = None
    # --- priors (Pyro: --scale-prior-mean/sd, --pos-prior-mean/sd; likelihood sd not on CLI)
    scale_prior_mean: float = 3.0
    scale_prior_sd: float = 0.1
    pos_prior_mean: float = 0.0
    pos_prior_sd: float = 1.0
    likelihood_sd: float = 0.3
    # --- z_pres prior (Pyro: --z-pres-prior, --z-pres-prior-raw, --anneal-prior*)
    z_pres_prior: float = 0.5
    z_pres_prior_raw: bool = False
    anneal_prior: str = "none"
    anneal_prior_to: float = 1e-7
    anneal_prior_begin: int = 0
    anneal_prior_duration: int = 100_000
    # --- initialisation: "torch" (U(+-1/sqrt(fan_in)), as Pyro) or "flax" (lecun normal)
    init: str = "torch"
    # --- variants (not in Pyro's example)
    # guide_input: what the guide's recurrent (and baseline) network reads at step t: "image" (AIR)
    # or "difference" (DAIR: the image minus the guide's reconstruction of steps < t).
    guide_input: str = "image"
    # glimpse_input: what the glimpse encoder (z_what) crops at step t: "image" or, with DAIR only,
    # "residual" (the image minus the reconstruction of steps < t, as the DAIR paper describes) or
    # "both" (the image's and the residual's crops side by side as channels: 2C per pixel).
    glimpse_input: str = "image"
    # presence_estimator: "nvil" (score function + learned baselines, Pyro's), "vimco" (same
    # model and guide without baseline networks; the trainer builds a VIMCO objective), "rws"
    # (the same model and guide; reweighted wake-sleep: the model on the K-sample bound, the
    # guide on the inclusive KL) or "concrete" (relaxed Bernoulli z_pres, everything
    # reparameterised, no baseline networks).
    presence_estimator: str = "nvil"
    # temperatures of the relaxed z_pres (used with "concrete" only): the guide's, and the
    # prior's (None: the guide's). Both can be annealed with the ``temperature`` keyword.
    concrete_temperature: float = 1.0
    concrete_prior_temperature: Optional[float] = None
    # optional exponential annealing of both temperatures: concrete_temperature -> _to over
    # concrete_anneal_steps optimisation steps (a traced array: no recompilation)
    concrete_temperature_to: Optional[float] = None
    concrete_anneal_steps: int = 0
    # convolutional networks (not in Pyro's example; None keeps the MLP): the feature maps of the
    # stride-2 convolutions of the glimpse encoder, the decoder and the guide's image embedding
    # (core.nets.ConvEncoder / ConvDecoder / ConvEmbed). The dense layer next to the convolutions
    # has encoder_net[-1] / decoder_net[-1] units (one size each); the embedding outputs
    # conv_embed_features values, which the LSTM projects instead of the H*W*C pixels.
    conv_encoder: Optional[Tuple[int, ...]] = None
    conv_decoder: Optional[Tuple[int, ...]] = None
    conv_embed: Optional[Tuple[int, ...]] = None
    # broadcast decoder (not in Pyro's example; None keeps decoder_net's MLP): the hidden widths of
    # a per-pixel MLP of z_what and the pixel's position in the window (the spatial broadcast
    # decoder with 1x1 convolutions, core.nets.BroadcastDecoder); it draws one smooth shape per
    # window more easily than two; decoder_net, then unused, must stay at its default
    broadcast_decoder: Optional[Tuple[int, ...]] = None
    # template decoder (not in Pyro's example; None: decoder_net's MLP draws each window): the
    # number of learned shape templates (decoder_net's MLP applied to as many learned codes) that
    # z_what mixes and rotates (core.nets.TemplateDecoder): one window draws one shape; needs
    # object_colour="single"
    template_decoder: Optional[int] = None
    conv_embed_features: int = 256
    # mixed precision (not in Pyro's example): "bfloat16" rounds the inputs and kernels of every
    # dense layer and convolution (image projections, LSTM, encoder, decoder, predictors) to
    # bfloat16 with float32 accumulation; parameters, optimiser state, the spatial transformer,
    # the likelihood and the ELBO stay float32 (core.nets.mixed_precision)
    compute_dtype: str = "float32"
    # composition (not in Pyro's example): how the objects make the canvas. "add" (AIR's): the
    # presence-weighted sum of the placed windows. "over": the decoder also draws an opacity
    # (one more output channel, through the same output bias and sigmoid) and the objects occlude
    # each other front to back, step 0 in front: canvas = sum_t T_t w_t a_t c_t with transmittance
    # T_t = prod_{s<t} (1 - w_s a_s) (w the effective presence, a the placed opacity, c the colour)
    composition: str = "add"
    # object colour (not in Pyro's example): "pixel" (AIR's) decodes every window pixel's colour;
    # "single" decodes one shape channel per window pixel (the intensity with "add", the opacity
    # with "over") and one colour per object (C values in (0, 1) from z_what), so one window
    # cannot draw two objects of different colours (scenes of solid-coloured objects, as
    # multi-dSprites): the object is colour x shape with "add", the colour at the shape's opacity
    # with "over"
    object_colour: str = "pixel"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for name in ("num_steps", "image_size", "window_size", "z_what_size", "rnn_hidden_size"):
            v = getattr(self, name)
            if not _positive_int(v):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.image_width is not None and not _positive_int(self.image_width):
            raise ValueError(f"image_width must be a positive int or None (square), got {self.image_width!r}")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels not in CHANNELS:
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        if self.window_size > min(self.height, self.width):
            raise ValueError(
                f"window_size ({self.window_size}) must not be larger than the canvas: image_size (height "
                f"{self.height}) x image_width (width {self.width})"
            )
        for name in ("encoder_net", "decoder_net", "predict_net", "bl_predict_net"):
            set_(name, _sizes(getattr(self, name), name))
        if self.embed_net is not None:
            set_("embed_net", _sizes(self.embed_net, "embed_net"))
            if len(self.embed_net) == 0:
                raise ValueError("embed_net must be None (identity) or a non-empty sequence of sizes")
        nl = _TORCH_NAMES.get(self.non_linearity, str(self.non_linearity).lower())
        if nl not in NON_LINEARITIES:
            raise ValueError(f"non_linearity must be one of {NON_LINEARITIES}, got {self.non_linearity!r}")
        set_("non_linearity", nl)
        for name in ("scale_prior_sd", "pos_prior_sd", "likelihood_sd"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        for name in ("scale_prior_mean", "pos_prior_mean"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if self.scale_prior_mean <= 0:
            raise ValueError(f"scale_prior_mean must be positive (a window scale), got {self.scale_prior_mean!r}")
        if self.decoder_output_bias is not None and not math.isfinite(self.decoder_output_bias):
            raise ValueError(f"decoder_output_bias must be finite, got {self.decoder_output_bias!r}")
        if self.baseline_scalar is not None and not (math.isfinite(self.baseline_scalar) and self.baseline_scalar != 0):
            raise ValueError(f"baseline_scalar must be finite and non-zero, got {self.baseline_scalar!r}")
        if self.z_pres_prior_raw:
            if not 0.0 <= self.z_pres_prior <= 1.0:
                raise ValueError(f"z_pres_prior must be in [0, 1] with z_pres_prior_raw, got {self.z_pres_prior!r}")
        elif not (math.isfinite(self.z_pres_prior) and self.z_pres_prior >= 0):
            raise ValueError(f"z_pres_prior (geometric k) must be >= 0, got {self.z_pres_prior!r}")
        if self.anneal_prior not in ANNEAL_MODES:
            raise ValueError(f"anneal_prior must be one of {ANNEAL_MODES}, got {self.anneal_prior!r}")
        if not 0.0 < self.anneal_prior_to <= 1.0:
            raise ValueError(f"anneal_prior_to must be in (0, 1], got {self.anneal_prior_to!r}")
        if self.anneal_prior_begin < 0:
            raise ValueError(f"anneal_prior_begin must be >= 0, got {self.anneal_prior_begin!r}")
        if self.anneal_prior_duration <= 0:
            raise ValueError(f"anneal_prior_duration must be positive, got {self.anneal_prior_duration!r}")
        if self.init not in ("torch", "flax"):
            raise ValueError(f"init must be 'torch' or 'flax', got {self.init!r}")
        self._validate_variants()
        self._validate_conv()
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        if self.composition not in COMPOSITIONS:
            raise ValueError(f"composition must be one of {COMPOSITIONS}, got {self.composition!r}")
        if self.object_colour not in OBJECT_COLOURS:
            raise ValueError(f"object_colour must be one of {OBJECT_COLOURS}, got {self.object_colour!r}")
        if self.composition == "over" and not self.decoder_output_use_sigmoid:
            raise ValueError('composition="over" needs decoder_output_use_sigmoid=True (opacities must lie in (0, 1))')

    def _validate_conv(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for name in ("conv_encoder", "conv_decoder", "conv_embed", "broadcast_decoder"):
            if getattr(self, name) is not None:
                set_(name, _sizes(getattr(self, name), name))
                if not getattr(self, name):
                    raise ValueError(f"{name} must be None (the MLP) or a non-empty sequence of sizes")
        decoders = [n for n in ("conv_decoder", "broadcast_decoder", "template_decoder") if getattr(self, n) is not None]
        if len(decoders) > 1:
            raise ValueError(f"{' and '.join(decoders)} are different decoders: set one of them")
        mlp_default = next(f.default for f in dataclasses.fields(self) if f.name == "decoder_net")
        if self.broadcast_decoder is not None and self.decoder_net != mlp_default:
            raise ValueError(
                f"decoder_net {self.decoder_net} sizes the MLP, which broadcast_decoder replaces: leave it at {mlp_default}"
            )
        k = self.template_decoder
        if k is not None and not _positive_int(k):
            raise ValueError(f"template_decoder must be None (the MLP) or a positive number of templates, got {k!r}")
        if k is not None and self.object_colour != "single":
            raise ValueError('template_decoder draws a one-channel shape: it needs object_colour="single"')
        for conv, mlp in (("conv_encoder", "encoder_net"), ("conv_decoder", "decoder_net")):
            if getattr(self, conv) is not None and len(getattr(self, mlp)) != 1:
                raise ValueError(f"with {conv}, {mlp} must hold one size (the dense layer's), got {getattr(self, mlp)}")
        if self.conv_embed is not None and self.embed_net is not None:
            raise ValueError("conv_embed and embed_net are two image embeddings: set one of them")
        if not _positive_int(self.conv_embed_features):
            raise ValueError(f"conv_embed_features must be a positive int, got {self.conv_embed_features!r}")

    def _validate_variants(self) -> None:
        if self.concrete_temperature_to is not None and not (
            math.isfinite(self.concrete_temperature_to) and self.concrete_temperature_to > 0
        ):
            raise ValueError(f"concrete_temperature_to must be positive, got {self.concrete_temperature_to!r}")
        if (
            isinstance(self.concrete_anneal_steps, bool)
            or not isinstance(self.concrete_anneal_steps, int)
            or (self.concrete_anneal_steps < 0)
        ):
            raise ValueError(f"concrete_anneal_steps must be an int >= 0, got {self.concrete_anneal_steps!r}")
        if (self.concrete_temperature_to is None) != (self.concrete_anneal_steps == 0):
            raise ValueError("concrete_temperature_to and concrete_anneal_steps must be set together")
        if self.guide_input not in GUIDE_INPUTS:
            raise ValueError(f"guide_input must be one of {GUIDE_INPUTS}, got {self.guide_input!r}")
        if self.glimpse_input not in GLIMPSE_INPUTS:
            raise ValueError(f"glimpse_input must be one of {GLIMPSE_INPUTS}, got {self.glimpse_input!r}")
        if self.glimpse_input != "image" and self.guide_input != "difference":
            raise ValueError(f'glimpse_input="{self.glimpse_input}" needs guide_input="difference" (DAIR renders the residual)')
        if self.presence_estimator not in PRESENCE_ESTIMATORS:
            raise ValueError(f"presence_estimator must be one of {PRESENCE_ESTIMATORS}, got {self.presence_estimator!r}")
        for name in ("concrete_temperature", "concrete_prior_temperature"):
            v = getattr(self, name)
            if v is None and name == "concrete_prior_temperature":
                continue
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
            object.__setattr__(self, name, float(v))

    # ------------------------------------------------------------------ helpers
    @classmethod
    def tutorial(cls, **overrides) -> "AIRConfig":
        """The Pyro tutorial recipe (``--z-pres-prior 0.01 --scale-prior-sd 0.2 --predict-net 200
        --bl-predict-net 200 --decoder-output-use-sigmoid --decoder-output-bias -2``)."""
        kw = dict(
            z_pres_prior=0.01,
            scale_prior_sd=0.2,
            predict_net=(200,),
            bl_predict_net=(200,),
            decoder_output_use_sigmoid=True,
            decoder_output_bias=-2.0,
        )
        kw.update(overrides)
        return cls(**kw)

    def replace(self, **changes) -> "AIRConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AIRConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown AIRConfig fields: {sorted(unknown)}")
        return cls(**d)

    @property
    def relaxed_presence(self) -> bool:
        """True when z_pres is a relaxed (Concrete) Bernoulli (``presence_estimator="concrete"``)."""
        return self.presence_estimator == "concrete"

    @property
    def uses_convolutions(self) -> bool:
        """True when a glimpse encoder, decoder or image embedding is convolutional."""
        return any(c is not None for c in (self.conv_encoder, self.conv_decoder, self.conv_embed))

    @property
    def uses_baseline_nets(self) -> bool:
        """True when the guide builds NVIL's baseline networks: ``use_baselines`` and the "nvil"
        estimator (VIMCO's control variate and Concrete's pathwise gradients need none)."""
        return self.use_baselines and self.presence_estimator == "nvil"

    @property
    def prior_temperature_ratio(self) -> float:
        """concrete_prior_temperature / concrete_temperature (1.0 when the prior's is None): the
        prior's temperature is the guide's times this, so one annealed value sets both."""
        if self.concrete_prior_temperature is None:
            return 1.0
        return float(self.concrete_prior_temperature) / float(self.concrete_temperature)

    @property
    def height(self) -> int:
        """Canvas height H (``image_size``)."""
        return self.image_size

    @property
    def width(self) -> int:
        """Canvas width W (``image_width``, or ``image_size`` when square)."""
        return self.image_size if self.image_width is None else self.image_width

    @property
    def image_shape(self) -> Tuple[int, ...]:
        """One scene's shape: (H, W) grayscale, (H, W, C) colour."""
        return (self.height, self.width) if self.channels == 1 else (self.height, self.width, self.channels)

    @property
    def window_shape(self) -> Tuple[int, ...]:
        """One window's shape: (w, w) grayscale, (w, w, C) colour."""
        w = self.window_size
        return (w, w) if self.channels == 1 else (w, w, self.channels)

    @property
    def glimpse_channels(self) -> int:
        """Channels of the glimpse encoder's input per window pixel: C, or 2C (image and residual)
        with ``glimpse_input="both"``."""
        return self.channels * (2 if self.glimpse_input == "both" else 1)

    @property
    def decoder_channels(self) -> int:
        """Channels the decoder draws per window pixel: C, plus an opacity with ``composition="over"``;
        1 (the shape) with ``object_colour="single"``."""
        if self.object_colour == "single":
            return 1
        return self.channels + (self.composition == "over")

    @property
    def object_colours(self) -> int:
        """Values the decoder draws per object after its window pixels: C with
        ``object_colour="single"`` (the object's colour), else 0."""
        return self.channels if self.object_colour == "single" else 0

    @property
    def decoder_output_size(self) -> int:
        """The decoder's output per object: w * w * ``decoder_channels`` + ``object_colours``."""
        return self.window_size**2 * self.decoder_channels + self.object_colours

    @property
    def num_pixels(self) -> int:
        """Values per scene, H * W * C (the likelihood's event size, the dense image input)."""
        return self.height * self.width * self.channels

    @property
    def rnn_input_size(self) -> int:
        """Size of the guide LSTM input: embed(x) + z_where(3) + z_what + z_pres(1)."""
        if self.conv_embed is not None:
            embed = self.conv_embed_features
        else:
            embed = self.num_pixels if self.embed_net is None else self.embed_net[-1]
        return embed + 3 + self.z_what_size + 1
