"""The ``load`` verb: plan the array, check it fits, fill it, describe the result.

Order of work in :func:`load`:

1. check the options (:mod:`preload.options`) and resolve the source to a
   manifest (:mod:`preload.sources`);
2. if ``size=None``, read every header to find the one common size
   (:func:`preload.fill.common_size`);
3. allocate the whole target once (:mod:`preload.target`), after checking
   that it fits;
4. decode file ``i`` straight into ``out[i]`` on a pool of threads
   (:func:`preload.fill.fill_slots`), with OpenCV quiet and single-threaded
   (:mod:`preload.quiet`);
5. drop skipped rows, and describe the result (:class:`~preload.Dataset`).
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm.auto import tqdm

from .dataset import Dataset
from .decode import Decoder
from .errors import Failure
from .fill import common_size, compact, fill_slots
from .options import DEFAULT_MAX_PIXELS, DecodeOptions, check_on_error, progress_wanted, resolve_workers
from .quiet import quiet_opencv
from .sources import manifest
from .target import allocate, check_out_path

logger = logging.getLogger("preload")

def load(
    source,
    *,
    size=None,
    layout: str = "NHWC",
    color: str = "rgb",
    resize: str = "stretch",
    interpolation: str | None = None,
    fill=0,
    exif: bool = True,
    reduce: bool = True,
    labels=None,
    out=None,
    workers: int | None = None,
    progress: bool | None = None,
    on_error: str = "raise",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Dataset:
    """Load every image of ``source`` into one preallocated uint8 array.

    Parameters
    ----------
    source : str, os.PathLike, sequence of paths, or Manifest
        A folder of class sub-folders, a flat folder, a CSV file (``path`` and
        optional ``label`` columns) or a list of paths. See
        :mod:`preload.sources` for the order of the rows.
    size : int, (height, width) or None
        Output size. ``None`` keeps the images' own size, which must then be
        the same for all of them.
    layout : {"NHWC", "NCHW"}
        Axis order of the array (any letter case).
    color : {"rgb", "bgr", "gray"}
        Channel order; "gray" gives one channel. Gray sources are repeated
        into three channels, alpha is dropped, 16-bit samples become
        ``value >> 8``.
    resize : {"stretch", "fit", "cover", "shorter"}
        "stretch" resizes to exactly ``size``; "fit" keeps the aspect ratio
        inside ``size`` and pads with ``fill``; "cover" keeps it and crops the
        centre; "shorter" scales the shorter side to ``max(size)`` and crops
        the centre (the usual resize-then-center-crop).
    interpolation : {"auto", "area", "linear", "nearest", "cubic", "lanczos"} or None
        The resize filter. None (= "auto"): a fast antialiased shrink, linear
        when enlarging; "area" is OpenCV's exact INTER_AREA. What each does
        and costs: :mod:`preload.options` (Interpolation).
    fill : int or tuple of int
        Padding value for ``resize="fit"``, per channel in ``color`` order.
    exif : bool
        Apply the EXIF orientation tag (rotate/flip as a camera meant it).
        ``False`` keeps the pixels in stored order.
    reduce : bool
        Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the output is at
        least that much smaller (faster, and itself an antialiasing filter).
    labels : sequence of int or str, optional
        Labels for a list of paths.
    out : None, numpy.ndarray, or path ending in ".npy"
        Where the pixels go: a new RAM array, an existing array or memmap of
        the right shape (filled in place), or a new ``.npy`` file that
        ``np.load(path, mmap_mode="r")`` opens anywhere.
    workers : int or None
        Threads decoding in parallel; None uses every core, 1 runs serially.
    progress : bool or None
        Show a progress bar on stderr; None shows it when stderr is a terminal or in
        a Jupyter notebook (as a widget there).
    on_error : {"raise", "skip", "zero"}
        On a file that cannot be loaded: raise :class:`ImageDecodeError`;
        drop it (images, labels and paths stay aligned); or leave its slot
        zero. Skipped and zeroed files are listed in ``Dataset.failed``.
    max_pixels : int
        Refuse images whose header announces more pixels than this before
        anything is allocated (decompression bombs).

    Returns
    -------
    Dataset
        ``images``, ``labels``, ``classes``, ``paths``, ``failed``.

    Raises
    ------
    SourceError, OptionError, TargetError
        Bad source, option value or ``out=``.
    InsufficientMemoryError, InsufficientDiskError
        The array does not fit; raised before any decoding.
    ImageDecodeError
        A file failed and ``on_error="raise"``.
    SizeMismatchError
        ``size=None`` and the images differ in size.

    Examples
    --------
    >>> import tempfile, os, cv2, numpy as np
    >>> root = tempfile.mkdtemp()
    >>> for name in ("cat", "dog"):
    ...     os.mkdir(os.path.join(root, name))
    ...     _ = cv2.imwrite(os.path.join(root, name, "1.png"), np.zeros((30, 40, 3), np.uint8))
    >>> ds = load(root, size=16, layout="NCHW", progress=False)
    >>> ds.images.shape, ds.labels.tolist(), ds.classes
    ((2, 3, 16, 16), [0, 1], ['cat', 'dog'])
    """
    options = DecodeOptions.create(
        size=size,
        layout=layout,
        color=color,
        resize=resize,
        interpolation=interpolation,
        fill=fill,
        exif=exif,
        reduce=reduce,
        max_pixels=max_pixels,
    )
    on_error = check_on_error(on_error)
    threads = resolve_workers(workers)
    check_out_path(out)  # a folder at out= is refused before any header is read
    files = manifest(source, labels=labels)
    total = len(files)
    decoder = Decoder(options)
    show = progress_wanted(progress)

    with quiet_opencv() as console:
        failed: list[Failure] = []
        origin = np.arange(len(files))  # manifest index of each row, for Failure.index
        slot_size = options.size
        if slot_size is None:
            slot_size, keep, failed = common_size(files, options, on_error, threads)
            if len(keep) != len(files):
                files, origin = files.select(keep), origin[keep]
        shape = (len(files),) + options.slot_shape(slot_size)
        target = allocate(out, shape)
        try:
            bar = tqdm(total=len(files), desc="loading", unit="img", file=console, disable=not show)
            with bar:
                errors = fill_slots(
                    decoder, files.paths, target.array, on_error=on_error, workers=threads,
                    on_done=lambda rows, found: bar.update(len(rows)),
                )
            errors = [Failure(int(origin[f.index]), f.path, f.reason, f.detail) for f in errors]
            keep = np.arange(len(files))
            if on_error == "skip" and errors:
                bad = {f.index for f in errors}
                keep = np.asarray([i for i in range(len(files)) if int(origin[i]) not in bad], dtype=np.int64)
                compact(target.array, keep)
                files = files.select(keep)
            images = target.finalize(len(keep))
        except BaseException:
            target.discard()
            raise
    failed = sorted(failed + errors, key=lambda f: f.index)
    if failed:
        logger.warning("%d of %d files were not loaded (first: %s); see Dataset.failed", len(failed), total, failed[0])
    return Dataset(images, files.labels, files.classes, files.paths, failed, options)
