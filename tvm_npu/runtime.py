"""Stage: run. Load a package and execute it on the host CPU through TVM's Relax VM.

Entry points: `load(path)` returning a `CompiledModel`, whose `run(inputs)` and
`benchmark(inputs, repeat)` are what `tvmc run` calls. Inputs are checked against the
package's interface (names, shapes, dtypes) before anything reaches TVM.
"""

from __future__ import annotations

import functools
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from .atomic import atomic_output
from .buckets import Bucketing, reference_model
from .errors import NpuError, first_line
from .frontend import TensorSpec
from .host import missing_isa
from .package import Package, read_package

FILL_MODES = ("zeros", "ones", "random", "image")
MAX_FILL_BYTES = 4 << 30  # generated inputs beyond this are a mistake (or a tampered package), not a test input


@dataclass(frozen=True)
class Timings:
    """Per-repeat latencies in milliseconds, summarized the way tvmc printed them."""

    ms: np.ndarray

    def summary(self) -> dict[str, float]:
        return {
            "mean": float(np.mean(self.ms)),
            "median": float(np.median(self.ms)),
            "max": float(np.max(self.ms)),
            "min": float(np.min(self.ms)),
            "std": float(np.std(self.ms)),
        }

    def __str__(self) -> str:
        stats = self.summary()
        header = "".join(f"{name + ' (ms)':>14}" for name in stats)
        values = "".join(f"{value:>14.4f}" for value in stats.values())
        return f"Execution time summary:\n{header}\n{values}"


@dataclass(frozen=True)
class LayerTime:
    """One VM call of a profiled inference: the called function's symbol (an NPU kernel such as
    `npu_conv2d_3`, a TVM-generated CPU function, or a `vm.builtin.*`), its host time and output shape."""

    symbol: str
    ms: float
    shape: tuple[int, ...]


class CompiledModel:
    """A loaded package, ready to run on the host CPU."""

    def __init__(self, package: Package, origin: str = "the package", weights: Mapping[str, tvm.runtime.Tensor] | None = None):
        self.metadata = package.metadata
        self.onnx_bytes = package.onnx_bytes  # the model the library was compiled from
        self.origin = origin
        self.device = tvm.cpu()
        self._vm = relax.VirtualMachine(package.library, self.device)
        # A bucket's library takes its kernels' constants after the inputs, shared with the other buckets.
        names = self.metadata.extra.get("weights", [])
        if any(name not in (weights or {}) for name in names):
            raise self._mismatch("its weights are missing from the package")
        self._weights = [weights[name] for name in names]
        params = [self._vm._get_function_param_name("main", i) for i in range(self._vm._get_function_arity("main"))]
        if params != [spec.name for spec in self.inputs] + names:
            raise self._mismatch(f"its library takes inputs {params}, its metadata names {[s.name for s in self.inputs]}")

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.metadata.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.metadata.outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one inference; returns outputs by name."""
        arguments = self._to_device(inputs)
        try:
            result = self._vm["main"](*arguments)
        except (ValueError, RuntimeError) as err:
            # Inputs already match the metadata here: a parameter check failing in the VM means they disagree.
            if "ErrorContext(fn=main, loc=param" not in str(err):
                raise
            raise self._mismatch(first_line(err)) from None
        values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
        return {spec.name: value.numpy() for spec, value in zip(self.outputs, values, strict=True)}

    def benchmark(self, inputs: Mapping[str, np.ndarray], repeat: int = 10, number: int = 1) -> Timings:
        """Times `repeat` measurements of `number` runs each, after one discarded warm-up run."""
        if repeat < 1 or number < 1:
            raise NpuError(f"--repeat and --number must be at least 1, got {repeat} and {number}")
        evaluator = self._vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return Timings(np.array(evaluator(*self._to_device(inputs)).results) * 1e3)

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """A no-argument call running one inference on `inputs`, copied to the device once
        (timing loops that interleave runtimes time each call themselves)."""
        main, args = self._vm["main"], self._to_device(inputs)
        return lambda: main(*args)

    def profile(self, inputs: Mapping[str, np.ndarray]) -> list[LayerTime]:
        """Host time of every VM call (kernels, TVM-generated CPU functions, VM builtins) in one
        inference, in call order. A Python hook times each call, adding a few microseconds to each."""
        calls: list[LayerTime] = []
        started: list[float] = []

        def instrument(func, symbol, before_run, ret_value, *args):
            if before_run:
                started.append(time.perf_counter())
            else:
                tensors = [a for a in args if isinstance(a, tvm.runtime.Tensor)]
                shape = tuple(tensors[-1].shape) if tensors else ()  # call_tir passes its output last
                calls.append(LayerTime(str(symbol), (time.perf_counter() - started.pop()) * 1e3, shape))
            return 0  # VMInstrumentReturnKind.NO_OP

        run = self.bind(inputs)
        self._vm.set_instrument(instrument)
        try:
            run()
        finally:
            self._vm.set_instrument(None)
        return calls

    def median_profile(self, inputs: Mapping[str, np.ndarray], runs: int) -> list[LayerTime]:
        """`profile` over `runs` inferences after a warm-up run, each call's median host time (one run on a
        shared machine can catch a preemption)."""
        self.run(inputs)
        profiles = [self.profile(inputs) for _ in range(runs)]
        return [
            LayerTime(call.symbol, float(np.median([p[i].ms for p in profiles])), call.shape)
            for i, call in enumerate(profiles[0])
        ]

    def _mismatch(self, detail: str) -> NpuError:
        return NpuError(f"{self.origin}: its metadata does not match its library ({detail}); tampered or corrupt, recompile it")

    def _to_device(self, inputs: Mapping[str, np.ndarray]) -> list[tvm.runtime.Tensor]:
        check_inputs(self.inputs, inputs)
        return [tvm.runtime.tensor(np.ascontiguousarray(inputs[spec.name]), self.device) for spec in self.inputs] + self._weights


def call_kind(symbol: str) -> str:
    """What a profiled VM call is: an NPU kernel (by family), a TVM-generated CPU function or a VM builtin."""
    if symbol.startswith("vm.builtin."):
        return VM_BUILTINS
    if symbol.startswith("npu_"):
        return "NPU kernel " + symbol.rsplit("_", 1)[0].replace("npu_", "npu.", 1)
    return CPU_FUNCTIONS


VM_BUILTINS = "VM builtins (allocation, shape checks)"
CPU_FUNCTIONS = "CPU (TVM-generated functions)"


def host_mismatch(metadata) -> str | None:
    """Why this host cannot run a package's library (built for a CPU with features this one lacks), or None."""
    missing = missing_isa(metadata.target_isa)
    return f"the library was built for {metadata.target.get('mcpu')}, this CPU lacks {', '.join(missing)}" if missing else None


def load(path: str | Path) -> CompiledModel | BucketedModel:
    """Opens a package written by `tvm_npu.compile` / `tvmc compile`."""
    package = read_package(path)
    return BucketedModel(package, str(path)) if package.buckets else CompiledModel(package, str(path))


class BucketedModel:
    """A loaded package of shape buckets (`tvm_npu.buckets`): `run` takes inputs of any size up to the
    largest bucket, runs the smallest bucket that holds them, padded, and returns the outputs cropped to
    the unpadded size. `inputs`/`outputs` are the largest bucket's; `buckets` are the single-shape models."""

    def __init__(self, package: Package, origin: str = "the package"):
        self.metadata = package.metadata
        self.onnx_bytes = package.onnx_bytes
        self.source_onnx = package.source_onnx
        self.origin = origin
        self.bucketing = Bucketing.from_dict(package.metadata.extra["bucketing"])
        weights = {name: tvm.runtime.tensor(array, tvm.cpu()) for name, array in package.weights.items()}  # once
        self.buckets = [CompiledModel(bucket, f"{origin} bucket {i}", weights) for i, bucket in enumerate(package.buckets)]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.bucketing.fill_specs(self.metadata.inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.metadata.outputs

    def choose(self, inputs: Mapping[str, np.ndarray], truncate: bool = False) -> tuple[int, dict[str, np.ndarray]]:
        """The bucket `run` picks for `inputs`, and the inputs padded to it."""
        return self.bucketing.choose(inputs, truncate)

    def complete(self, inputs: Mapping[str, np.ndarray], index: int | None = None) -> dict[str, np.ndarray]:
        """`inputs` with each valid-length input (`--valid-length`) the caller left out filled with the unpadded
        size (at most bucket `index`'s, where given)."""
        specs = {spec.name: spec for spec in self.metadata.inputs}
        completed = dict(inputs)
        for extra, (name, dim) in self.bucketing.valid_length.items():
            if extra not in inputs and name in inputs:
                size = np.shape(inputs[name])[dim]
                if index is not None:
                    size = min(size, self.bucketing.shapes[index][name][dim])
                completed[extra] = np.full(specs[extra].shape, size, specs[extra].dtype)
        return completed

    def run(self, inputs: Mapping[str, np.ndarray], truncate: bool = False) -> dict[str, np.ndarray]:
        """Runs one inference in the smallest bucket that holds `inputs`; an input larger than every bucket is
        an error unless `truncate` crops it to the largest (said, never silent: the caller asked)."""
        index, padded = self.choose(inputs, truncate)
        outputs = self.buckets[index].run({**self.complete(inputs, index), **padded})
        return self.bucketing.crop(outputs, self.bucketing.valid_sizes(inputs, index))

    def benchmark(self, inputs: Mapping[str, np.ndarray], repeat: int = 10, number: int = 1) -> Timings:
        """Times the bucket `run` picks, on the padded inputs."""
        index, padded = self.choose(inputs)
        return self.buckets[index].benchmark({**self.complete(inputs, index), **padded}, repeat, number)

    def specs(self, shapes: Mapping[str, tuple[int, ...]]) -> list[TensorSpec]:
        """The inputs a caller gives, at `shapes` (the largest bucket's where not given)."""
        return [TensorSpec(spec.name, tuple(shapes.get(spec.name, spec.shape)), spec.dtype) for spec in self.inputs]

    def view(self, shapes: Mapping[str, tuple[int, ...]]) -> BucketView:
        """This model at one unpadded input size, as `validate` takes a model: `run` pads into the bucket and
        crops, `onnx_bytes` is that bucket's quantized model at the unpadded size (`buckets.reference_model`)."""
        inputs = self.specs(shapes)
        index, _ = self.choose({spec.name: np.empty(spec.shape, spec.dtype) for spec in inputs})
        sizes = {spec.name: spec.shape for spec in inputs}
        reference = reference_model(self.source_onnx, self.buckets[index].onnx_bytes, self.bucketing.shapes[index], sizes)
        return BucketView(self, index, inputs, reference)


@dataclass
class BucketView:
    """A `BucketedModel` at one unpadded input size (see `BucketedModel.view`)."""

    model: BucketedModel
    index: int
    inputs: list[TensorSpec]
    onnx_bytes: bytes

    @property
    def metadata(self):
        return self.model.buckets[self.index].metadata

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.model.outputs

    @property
    def padded(self) -> bool:
        """Whether the package runs this size padded into its bucket (the reference runs it unpadded)."""
        bucket = self.model.bucketing.shapes[self.index]
        return any(tuple(spec.shape) != tuple(bucket[spec.name]) for spec in self.inputs if spec.name in bucket)

    def describe(self) -> str:
        sizes = " ".join(f"{spec.name}:[{','.join(map(str, spec.shape))}]" for spec in self.inputs)
        return f"input {sizes} in bucket {self.model.bucketing.describe(self.index)}"

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model.run(inputs)


def check_inputs(specs: list[TensorSpec], inputs: Mapping[str, np.ndarray]) -> None:
    """Raises NpuError naming the first input whose name, shape or dtype is wrong."""
    expected = [spec.name for spec in specs]
    missing = [name for name in expected if name not in inputs]
    extra = sorted(set(inputs) - set(expected))
    if missing or extra:
        problems = [f"missing {', '.join(missing)}" if missing else "", f"unexpected {', '.join(extra)}" if extra else ""]
        raise NpuError(
            f"inputs do not match the model ({'; '.join(p for p in problems if p)}); the model takes {', '.join(expected)}"
        )
    for spec in specs:
        value = np.asarray(inputs[spec.name])
        if value.dtype != np.dtype(spec.dtype) or tuple(value.shape) != spec.shape:
            raise NpuError(
                f"input {spec.name!r} is {value.dtype}{list(value.shape)} but the model takes "
                f"{spec.dtype}{list(spec.shape)}; convert it (e.g. array.astype('{spec.dtype}').reshape({list(spec.shape)}))"
            )


def make_inputs(
    specs: list[TensorSpec], fill_mode: str = "random", seed: int = 0, image: ImageFill | None = None
) -> dict[str, np.ndarray]:
    """Inputs filled like tvmc's --fill-mode (random: uniform [0, 1) floats, full-range integers;
    image: a picture as models see one, see `ImageFill`)."""
    if fill_mode not in FILL_MODES:
        raise NpuError(f"unknown fill mode {fill_mode!r}; choose one of {', '.join(FILL_MODES)}")
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if np.prod(spec.shape, dtype=np.float64) * dtype.itemsize > MAX_FILL_BYTES:
            raise NpuError(
                f"input {spec.name!r} of shape {list(spec.shape)} is larger than {MAX_FILL_BYTES >> 30} GiB; "
                "give it with --inputs instead of --fill-mode"
            )
        if fill_mode == "zeros":
            inputs[spec.name] = np.zeros(spec.shape, dtype)
        elif fill_mode == "ones":
            inputs[spec.name] = np.ones(spec.shape, dtype)
        elif fill_mode == "image":
            inputs[spec.name] = (image or ImageFill()).fill(spec, seed)
        elif dtype.kind == "f":
            inputs[spec.name] = rng.random(spec.shape, dtype=np.float32).astype(dtype)
        elif dtype.kind == "b":
            inputs[spec.name] = rng.integers(0, 2, spec.shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            inputs[spec.name] = rng.integers(info.min, info.max, spec.shape, dtype=dtype, endpoint=True)
    return inputs


def describe_fill(fill_mode: str, seed: int, count: int, image: ImageFill | None = None) -> str:
    """One line for a report: what `make_inputs(specs, fill_mode, seed .. seed + count - 1)` filled in."""
    seeds = f"seed {seed}" if count == 1 else f"seeds {seed}..{seed + count - 1}"
    if fill_mode == "image":
        return f"--fill-mode image, {seeds}: {(image or ImageFill()).describe()}"
    if fill_mode == "random":
        return f"--fill-mode random, {seeds}: floats uniform in [0, 1), integers over their whole range"
    return f"--fill-mode {fill_mode}: every element {1 if fill_mode == 'ones' else 0}"


# --fill-mode image. Pixel normalisations (RGB order, pixel values 0..255): (pixel / 255 - mean) / std.
IMAGE_NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet-trained CNNs, PaddleOCR's detector
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # [0, 1]
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # [-1, 1]: PaddleOCR's recogniser and text-direction classifier
    "raw": ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)),  # 0..255 as floats
}
DEFAULT_NORMALIZATION = "imagenet"
CROP_SIDE = (0.6, 1.0)  # a seeded sample's crop keeps this fraction of each side ...
NOISE_SIGMA = 4.0  # ... and gets Gaussian noise of this many pixel levels (of 255)


@dataclass(frozen=True)
class ImageFill:
    """--fill-mode image: a natural picture resized to each input's H x W, as a model sees one.

    The picture is `picture`, or by default matplotlib's sample photograph (sample_data/grace_hopper.jpg)
    with matplotlib's logo (sample_data/logo2.png) as a white caption label across its lower part, so
    that classifiers see a photograph and text detectors see a line of text. Seed 0 is the whole
    picture; any other seed is a seeded crop (60-100 % of each side), mirrored half the time, with
    Gaussian noise. Float inputs are normalised with `normalization` (IMAGE_NORMALIZATIONS); uint8
    inputs get the pixels, int8 inputs the pixels - 128. Inputs are NCHW or NHWC with 1 or 3 channels.
    """

    picture: Path | None = None
    normalization: str = DEFAULT_NORMALIZATION

    def __post_init__(self):
        if self.normalization not in IMAGE_NORMALIZATIONS:
            raise NpuError(f"unknown image normalisation {self.normalization!r}; choose one of {', '.join(IMAGE_NORMALIZATIONS)}")
        if self.picture is not None and not Path(self.picture).is_file():
            raise NpuError(f"image file {self.picture} does not exist; check the --image path")

    def describe(self) -> str:
        source = (
            f"picture {self.picture}"
            if self.picture
            else "matplotlib's sample photograph grace_hopper.jpg with its logo2.png as a caption"
        )
        mean, std = IMAGE_NORMALIZATIONS[self.normalization]
        scale = (
            "pixels 0..255" if self.normalization == "raw" else f"(pixel/255 - {list(mean)}) / {list(std)} ({self.normalization})"
        )
        return (
            f"{source}, RGB, resized to each input's H x W, float inputs {scale}; "
            f"seed 0 the whole picture, other seeds a crop of {CROP_SIDE[0]:.0%}-{CROP_SIDE[1]:.0%} a side, "
            f"mirrored half the time, noise sigma {NOISE_SIGMA:g}/255"
        )

    def fill(self, spec: TensorSpec, seed: int) -> np.ndarray:
        layout = _image_layout(spec.shape)
        dtype = np.dtype(spec.dtype)
        if layout is None or dtype.kind not in "fui" or (dtype.kind in "ui" and dtype.itemsize != 1):
            raise NpuError(
                f"input {spec.name!r} ({spec.dtype}{list(spec.shape)}) is not an image (NCHW or NHWC, "
                "1 or 3 channels, float, uint8 or int8); use --fill-mode random or give --inputs"
            )
        batch, channels, height, width = (spec.shape[i] for i in ((0, 1, 2, 3) if layout == "NCHW" else (0, 3, 1, 2)))
        rng = np.random.default_rng(seed)
        picture = _picture(self.picture)
        if channels == 1:
            picture = picture.convert("L")
        views = [_view(picture, rng, seed == 0 and b == 0, height, width) for b in range(batch)]
        pixels = np.stack([v.reshape(height, width, channels) for v in views])  # NHWC, 0..255
        if dtype.kind == "f":
            mean, std = (np.array(v, np.float64) for v in IMAGE_NORMALIZATIONS[self.normalization])
            if channels == 1:  # a grey picture: the channels' average normalisation
                mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
            pixels = (pixels / 255 - mean) / std
        else:
            pixels = np.round(pixels) - (128 if dtype.kind == "i" else 0)
        if layout == "NCHW":
            pixels = pixels.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(pixels.astype(dtype))


def _image_layout(shape: tuple[int, ...]) -> str | None:
    if len(shape) != 4:
        return None
    if shape[1] in (1, 3):
        return "NCHW"
    return "NHWC" if shape[3] in (1, 3) else None


@functools.lru_cache(maxsize=4)
def _picture(path: Path | None):
    """The picture as a PIL image (RGB), read once per process."""
    from PIL import Image, UnidentifiedImageError  # pillow comes with matplotlib

    if path is not None:
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise NpuError(f"cannot read image {path} ({first_line(err)}); give a PNG or JPEG picture") from None
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    with Image.open(folder / "grace_hopper.jpg") as photo, Image.open(folder / "logo2.png") as logo:
        photo = photo.convert("RGB")
        width = photo.width * 3 // 4
        logo = logo.convert("RGBA").resize((width, logo.height * width // logo.width), Image.BILINEAR)
        label = Image.new("RGB", logo.size, "white")
        label.paste(logo, (0, 0), logo)
        photo.paste(label, ((photo.width - width) // 2, photo.height - label.height - photo.height // 20))
    return photo


def _view(picture, rng: np.random.Generator, whole: bool, height: int, width: int) -> np.ndarray:
    """The whole picture, or a seeded crop / mirror / noise of it, resized to height x width (floats 0..255)."""
    from PIL import Image

    if not whole:
        crop_w, crop_h = (int(side * rng.uniform(*CROP_SIDE)) for side in picture.size)
        left, top = int(rng.integers(0, picture.width - crop_w + 1)), int(rng.integers(0, picture.height - crop_h + 1))
        picture = picture.crop((left, top, left + crop_w, top + crop_h))
        if rng.random() < 0.5:
            picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(picture.resize((width, height), Image.BILINEAR), np.float64)
    if not whole:
        pixels = np.clip(pixels + rng.normal(0, NOISE_SIGMA, pixels.shape), 0, 255)
    return pixels


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Reads arrays from an .npz file without ever unpickling (a file is data, not code)."""
    path = Path(path)
    if not path.is_file():
        raise NpuError(f"inputs file {path} does not exist; check the --inputs path")
    if not zipfile.is_zipfile(path):
        raise NpuError(f"{path} is not an .npz archive; save the arrays with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as err:  # noqa: BLE001 - numpy raises many kinds for a bad archive
        raise NpuError(f"{path} is not a readable .npz of arrays ({first_line(err)}); save it with numpy.savez") from None


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_output(path) as stream:
        np.savez(stream, **arrays)
