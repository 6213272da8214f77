"""Reading and writing videos with PyAV (FFmpeg inside the wheel), frames as arrays.

:class:`VideoReader` treats every file as hostile: only an allow-list of
container formats is opened, only local files are read (no playlists pointing
elsewhere), frame sizes are capped, and every failure (not a video, truncated,
no video stream, no frames, a decoding error) is one :class:`VideoReadError`
naming the file. Frames come out upright (the display matrix of phone videos
applied) with their own timestamps, so variable frame rates survive.

:class:`VideoWriter` encodes frames to one file (H.264 for colour and mattes,
ProRes 4444 for video with an alpha channel) keeping each frame's timestamp,
and copies the source's audio stream. It writes where it is told; callers
give it the temporary path of :func:`p3m.io.atomic_write`, so a final name
only ever holds a finished video.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".mts", ".m2ts",
                    ".3gp", ".flv", ".wmv", ".ogv")
# FFmpeg demuxers allowed to open a file: nothing that follows references to other files or URLs
# (HLS/DASH playlists, concat lists), whatever the file's extension says.
ALLOWED_DEMUXERS = ("mov", "matroska", "avi", "mpeg", "mpegts", "flv", "asf", "ogg")
# A decoded frame larger than this is refused (8K is 33 megapixels).
MAX_FRAME_PIXELS = 1 << 26

# Output codecs by kind of frame: (codec, pixel format, container suffix, codec options).
VIDEO_CODECS = {
    "colour": ("libx264", "yuv420p", ".mp4", {"crf": "18", "preset": "medium"}),
    "matte": ("libx264", "yuv420p", ".mp4", {"crf": "12", "preset": "medium"}),
    "rgba": ("prores_ks", "yuva444p10le", ".mov", {"profile": "4444", "vendor": "apl0"}),
}


class VideoReadError(ValueError):
    """An input video could not be read; the message names the file and the problem."""


def is_video_file(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _av():
    try:
        import av
    except ImportError:
        raise VideoReadError("video files need PyAV: pip install 'p3m[video]'") from None
    av.logging.set_level(None)  # FFmpeg's own log lines would repeat what the errors say
    return av


def _open_input(path: Path):
    av = _av()
    if not path.exists():
        raise VideoReadError(f"{path}: no such file")
    if path.is_dir():
        raise VideoReadError(f"{path}: is a folder, not a video")
    if not path.is_file():
        raise VideoReadError(f"{path}: not a regular file (a device or a pipe?)")
    try:
        return av.open(str(path), "r", options={"format_whitelist": ",".join(ALLOWED_DEMUXERS),
                                                "protocol_whitelist": "file"})
    except (av.error.FFmpegError, OSError) as error:
        raise VideoReadError(f"{path}: not a video file, or truncated ({_reason(error)})") from None


def _reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame.

    image: (H, W, 3) uint8 RGB as displayed: square pixels (the sample aspect
           ratio applied) and upright (the display matrix applied).
    pts:   presentation timestamp in the reader's ``time_base``.
    time:  presentation time in seconds.
    """

    image: np.ndarray
    pts: int
    time: float


def orientation(display_matrix: bytes | None) -> tuple[bool, bool, bool]:
    """(transpose, flip left-right, flip up-down), applied in this order, that turn
    a decoded frame upright from FFmpeg's 3x3 display matrix (9 int32; 16.16 fixed point).

    Only the eight axis-aligned orientations exist in practice; others round to the nearest.
    """
    if display_matrix is None or len(display_matrix) < 36:
        return False, False, False
    a, b, _, c, d = np.frombuffer(display_matrix[:20], "<i4").astype(np.float64)
    # Display coordinates (y down): x' = a x + c y, y' = b x + d y.
    if abs(a) >= abs(b):
        return False, a < 0, d < 0
    return True, c < 0, b < 0


def square_pixel_size(width: int, height: int, pixel_aspect: Fraction | None) -> tuple[int, int]:
    """(width, height) at which a frame of ``pixel_aspect`` (sample aspect ratio: a pixel's displayed
    width over its height; None or 0 when unknown, taken as square) shows its displayed shape with
    square pixels. The frame is only ever stretched: wider for wide pixels, taller for tall ones."""
    if not pixel_aspect or pixel_aspect == 1:
        return width, height
    if pixel_aspect > 1:
        return max(width, round(width * pixel_aspect)), height
    return width, max(height, round(height / pixel_aspect))


def _upright(image: np.ndarray, transpose: bool, flip_lr: bool, flip_ud: bool) -> np.ndarray:
    if transpose:
        image = image.transpose(1, 0, 2)
    if flip_lr:
        image = image[:, ::-1]
    if flip_ud:
        image = image[::-1]
    return np.ascontiguousarray(image)


class VideoReader:
    """Decode a video file frame by frame; usable once, as an iterator and a context manager.

    Opening decodes the first frame, so a file without a decodable frame fails
    here, before anything is written for it.

    Attributes:
        path: the file.
        width, height: displayed frame size in pixels (square pixels, upright).
        frame_rate: the average frame rate (frames per second) as a Fraction.
        time_base: the unit of :attr:`VideoFrame.pts`.
        duration: seconds, from the container (None when it does not say).
        frame_count: the container's frame count, or an estimate from the
            duration (None when neither is known).
        has_audio: whether the file holds an audio stream.

    Raises:
        VideoReadError: when opening or while iterating.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._container = _open_input(self.path)
        try:
            self._open_stream()
        except BaseException:
            self._container.close()
            raise

    def _open_stream(self) -> None:
        av = _av()
        streams = [stream for stream in self._container.streams.video
                   if not stream.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            raise VideoReadError(f"{self.path}: no video stream")
        self._stream = stream = streams[0]
        context = stream.codec_context
        self._pixel_aspect = Fraction(stream.sample_aspect_ratio or context.sample_aspect_ratio or 1)
        self._check_size(context.width, context.height)
        stream.thread_type = "AUTO"
        self.time_base = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.frame_rate = Fraction(rate) if rate else Fraction(25)
        self.has_audio = bool(self._container.streams.audio)
        if stream.duration is not None:
            self.duration = float(stream.duration * self.time_base)
        elif self._container.duration is not None:
            self.duration = self._container.duration / 1_000_000
        else:
            self.duration = None
        if stream.frames:
            self.frame_count = int(stream.frames)
        elif self.duration:
            self.frame_count = max(1, round(self.duration * self.frame_rate))
        else:
            self.frame_count = None
        self._frames = self._decode()
        first = next(self._frames, None)
        if first is None:
            raise VideoReadError(f"{self.path}: no video frames")
        self._first = first
        self.height, self.width = first.image.shape[:2]

    def _check_size(self, width: int, height: int) -> tuple[int, int]:
        """The displayed size of ``width`` x ``height`` frames; refused above :data:`MAX_FRAME_PIXELS`."""
        shown = square_pixel_size(width, height, self._pixel_aspect)
        if shown[0] * shown[1] > MAX_FRAME_PIXELS:
            displayed = f", displayed {shown[0]}x{shown[1]}" if shown != (width, height) else ""
            raise VideoReadError(f"{self.path}: refused, frames too large ({width}x{height}{displayed})")
        return shown

    def _decode(self) -> Iterator[VideoFrame]:
        av = _av()
        last_pts = None
        step = max(1, round(1 / (self.frame_rate * self.time_base)))
        layout = None
        try:
            for frame in self._container.decode(self._stream):
                width, height = self._check_size(frame.width, frame.height)
                if layout is None:
                    matrix = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
                    layout = orientation(bytes(matrix) if matrix is not None else None)
                pts = frame.pts
                if pts is None or (last_pts is not None and pts <= last_pts):
                    pts = 0 if last_pts is None else last_pts + (step if pts is None else 1)
                last_pts = pts
                image = frame.to_ndarray(format="rgb24", width=width, height=height)
                yield VideoFrame(_upright(image, *layout), int(pts),
                                 float(pts * self.time_base))
        except av.error.FFmpegError as error:
            raise VideoReadError(f"{self.path}: cannot decode video ({_reason(error)})") from None
        except MemoryError:
            raise VideoReadError(f"{self.path}: cannot decode video (out of memory)") from None

    def __iter__(self) -> Iterator[VideoFrame]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        yield from self._frames

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """Encode frames into ``path`` (its suffix picks the container), keeping their timestamps.

    Args:
        path: the file to write (give :func:`p3m.io.atomic_write`'s temporary path).
        kind: ``colour`` (H.264, 4:2:0), ``matte`` (grayscale as H.264 4:2:0 luma)
            or ``rgba`` (ProRes 4444 with alpha, 10-bit).
        frame_rate: the nominal rate (the encoder's rate control uses it).
        time_base: the unit of the timestamps given to :meth:`write`.
        audio_from: a video whose first audio stream is copied (re-encoded to
            AAC when the container cannot hold its codec); None for no audio.
        reencode_audio: re-encode the audio to AAC even where it could be
            copied, so that only its samples go along: a copied stream keeps
            its codec's headers and packets, which can hold text (a Vorbis
            comment header, an AAC program config comment or data element).

    Re-encoded audio keeps its sample rate where AAC has it (else 48 kHz) and
    its mono or stereo; more channels are mixed down to stereo.

    4:2:0 needs even sides: an odd width or height is padded by repeating the
    last column or row. Use as a context manager; leaving it closes the file.
    """

    def __init__(self, path: str | os.PathLike, kind: str, frame_rate: Fraction, time_base: Fraction,
                 audio_from: str | os.PathLike | None = None, reencode_audio: bool = False):
        av = _av()
        if kind not in VIDEO_CODECS:
            raise ValueError(f"unknown video kind {kind!r}; use one of {', '.join(VIDEO_CODECS)}")
        self.path = Path(path)
        self.kind = kind
        self._codec, self._pix_fmt, _, self._options = VIDEO_CODECS[kind]
        self._frame_rate = Fraction(frame_rate).limit_denominator(1_000_000)
        self._time_base = Fraction(time_base)
        self._container = av.open(str(self.path), "w")
        self._closed = False
        self._stream = None
        self._last_pts = None
        self._audio = None
        self._reencode_audio = reencode_audio
        if audio_from is not None:
            try:
                self._open_audio(Path(audio_from))
            except BaseException:
                self._container.close()
                raise

    def _open_audio(self, source: Path) -> None:
        av = _av()
        self._audio_input = _open_input(source)
        if not self._audio_input.streams.audio:
            self._audio_input.close()
            return
        audio_in = self._audio_input.streams.audio[0]
        name = audio_in.codec_context.name
        if name in self._container.supported_codecs and not self._reencode_audio:
            audio_out = self._container.add_stream_from_template(audio_in)
            self._transcoder = None
        else:
            rate = audio_in.codec_context.sample_rate
            if rate not in av.Codec("aac", "w").audio_rates:
                rate = 48000
            mono = audio_in.codec_context.layout.nb_channels == 1
            audio_out = self._container.add_stream("aac", rate=rate, layout="mono" if mono else "stereo")
            self._transcoder = av.AudioResampler(format=audio_out.codec_context.format.name,
                                                 layout=audio_out.codec_context.layout.name,
                                                 rate=audio_out.codec_context.sample_rate)
        self._audio = (audio_in, audio_out, self._audio_input.demux(audio_in))

    def _add_video_stream(self, height: int, width: int) -> None:
        stream = self._container.add_stream(self._codec, rate=self._frame_rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = self._pix_fmt
        stream.time_base = self._time_base
        stream.codec_context.time_base = self._time_base
        stream.options = dict(self._options)
        if self._codec == "prores_ks":
            # FFmpeg's threaded prores_ks corrupts 16-px blocks of the alpha plane when the
            # width is not a multiple of 16 (seen at 81 and 82 px); one thread encodes it exactly.
            stream.codec_context.thread_count = 1
        self._stream = stream

    def write(self, frame: np.ndarray, pts: int) -> None:
        """Encode one frame: (H, W) uint8 (matte), (H, W, 3) (colour) or (H, W, 4) (rgba) at ``pts``."""
        av = _av()
        if self._pix_fmt == "yuv420p" and (frame.shape[0] % 2 or frame.shape[1] % 2):
            pad = ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2)) + ((0, 0),) * (frame.ndim - 2)
            frame = np.pad(frame, pad, mode="edge")
        if self._stream is None:
            self._add_video_stream(*frame.shape[:2])
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        layout = {2: "gray", 3: "rgb24", 4: "rgba"}[frame.ndim if frame.ndim == 2 else frame.shape[2]]
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=layout)
        video_frame.pts = pts
        video_frame.time_base = self._time_base
        self._container.mux(self._stream.encode(video_frame))
        if self._audio is not None:
            self._copy_audio(until=float(pts * self._time_base) + 1.0)

    def _copy_audio(self, until: float | None) -> None:
        """Copy audio packets up to ``until`` seconds (all when None), interleaved with the video."""
        av = _av()
        audio_in, audio_out, packets = self._audio
        try:
            for packet in packets:
                if packet.dts is None:
                    continue
                if self._transcoder is None:
                    packet.stream = audio_out
                    self._container.mux(packet)
                else:
                    for decoded in packet.decode():
                        for resampled in self._transcoder.resample(decoded):
                            self._container.mux(audio_out.encode(resampled))
                if until is not None and packet.pts is not None and packet.pts * audio_in.time_base > until:
                    return
        except av.error.FFmpegError as error:
            raise VideoReadError(f"{self._audio_input.name}: cannot read audio ({_reason(error)})") from None
        if self._transcoder is not None:
            self._container.mux(audio_out.encode(None))
        self._audio_input.close()
        self._audio = None

    def close(self) -> None:
        """Flush the encoder and the rest of the audio, and finish the file."""
        if self._closed:
            return
        if self._stream is not None:
            self._container.mux(self._stream.encode(None))
        if self._audio is not None:
            self._copy_audio(until=None)
        self._closed = True
        self._container.close()

    def abort(self) -> None:
        """Stop without finishing the file (the caller discards it)."""
        if self._closed:
            return
        self._closed = True
        if self._audio is not None:
            self._audio_input.close()
        self._container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
