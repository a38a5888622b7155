"""Files as they may leave the machine: the same weights and pixels, with no local path in their text.

A push sends what an adapter folder holds, and files made elsewhere (kohya's sd-scripts, another UI) carry
text Studio did not write: `ss_*` metadata in a safetensors header, `parameters` in a PNG. Each file is checked
here; one that needs no change is sent as it is, one that does is rewritten into a temporary folder:

    safetensors   the `__metadata__` values reduced (`studio.lora.folder.public_metadata`); the tensor bytes are
                  copied unchanged, so the A1111 "addnet" hash (of the tensor data) stays what it was
    PNG           tEXt/zTXt/iTXt text chunks reduced (`public_text`); the image chunks are copied unchanged
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

from studio.errors import LoraError
from studio.lora.folder import public_metadata, public_text

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def public_file(path: Path, workdir: Path) -> Path:
    """`path` if it may be sent as it is, else a copy in `workdir` without local paths (same name)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _public_safetensors(path, workdir)
    if suffix == ".png":
        return _public_png(path, workdir)
    return path


def _copy_target(path: Path, workdir: Path) -> Path:
    target = Path(workdir) / f"{len(list(Path(workdir).iterdir()))}" / path.name  # names may repeat across folders
    target.parent.mkdir(parents=True)
    return target


def _public_safetensors(path: Path, workdir: Path) -> Path:
    with open(path, "rb") as f:
        raw_length = f.read(8)
        if len(raw_length) != 8:
            raise LoraError(f"{path.name} is not a safetensors file (it is shorter than its header).")
        length = int.from_bytes(raw_length, "little")
        if length > 100_000_000:  # safetensors' own limit: a corrupt or hostile length is not read into memory
            raise LoraError(f"{path.name} has a broken safetensors header (length {length}); re-download it.")
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError):
            raise LoraError(f"{path.name} has a broken safetensors header; re-download or re-save it.") from None
        metadata = header.get("__metadata__") if isinstance(header, dict) else None
        if not isinstance(metadata, dict):
            return path
        public = public_metadata(metadata)
        if public == metadata:
            return path
        header["__metadata__"] = public
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)  # keep the tensor data 8-byte aligned, as safetensors writes it
        target = _copy_target(path, workdir)
        with open(target, "wb") as out:
            out.write(len(text).to_bytes(8, "little"))
            out.write(text)
            shutil.copyfileobj(f, out, 1024 * 1024)  # the tensor data, byte for byte
    return target


def _public_png(path: Path, workdir: Path) -> Path:
    public = public_png_bytes(path.read_bytes())
    if public is None:
        return path
    target = _copy_target(path, workdir)
    target.write_bytes(public)
    return target


def copy_public(source: Path, target: Path) -> Path:
    """Copy a PNG (a validation sample) to `target` with its text chunks reduced; other files as they are."""
    source, target = Path(source), Path(target)
    public = public_png_bytes(source.read_bytes()) if source.suffix.lower() == ".png" else None
    if public is None:
        shutil.copy2(source, target)
    else:
        target.write_bytes(public)
        shutil.copystat(source, target)
    return target


def public_png_bytes(data: bytes) -> bytes | None:
    """The PNG `data` with local paths in its text chunks reduced to names; None when nothing needs to change."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    chunks, changed, at = [PNG_SIGNATURE], False, len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        body = data[at + 8 : at + 8 + length]
        end = at + 12 + length
        public = _public_text_chunk(kind, body) if kind in (b"tEXt", b"zTXt", b"iTXt") else body
        if public is None:
            changed = True  # text that cannot be read cannot be checked: it is not sent
        elif public != body:
            changed = True
            chunks.append(struct.pack(">I4s", len(public), kind) + public)
            chunks.append(struct.pack(">I", zlib.crc32(kind + public) & 0xFFFFFFFF))
        else:
            chunks.append(data[at:end])
        at = end
    chunks.append(data[at:])
    return b"".join(chunks) if changed else None


def _public_text_chunk(kind: bytes, body: bytes) -> bytes | None:
    """The chunk's data with its text reduced, or None when it cannot be read (the chunk is then left out)."""
    keyword, sep, rest = body.partition(b"\0")
    if not sep:
        return None
    try:
        if kind == b"tEXt":
            return keyword + b"\0" + public_text(rest.decode("latin-1")).encode("latin-1", "replace")
        if kind == b"zTXt":
            text = zlib.decompress(rest[1:]).decode("latin-1")
            return keyword + b"\0\0" + zlib.compress(public_text(text).encode("latin-1", "replace"))
        flag, method, rest = rest[0], rest[1], rest[2:]  # iTXt
        language, _, rest = rest.partition(b"\0")
        translated, _, text = rest.partition(b"\0")
        text = zlib.decompress(text) if flag else text
        text = public_text(text.decode("utf-8")).encode()
        translated = public_text(translated.decode("utf-8")).encode()
        head = keyword + b"\0" + bytes([flag, method]) + language + b"\0" + translated + b"\0"
        return head + (zlib.compress(text) if flag else text)
    except (zlib.error, UnicodeDecodeError, IndexError):
        return None
