"""Fills its temporary directory (and tries the shared /tmp), then says what it saw there first."""

import os
import tempfile


def run(megabytes=64, leave="marker"):
    tmp = tempfile.gettempdir()
    seen = sorted(os.listdir(tmp))
    shared_seen = os.path.exists(f"/tmp/{leave}-shared")
    try:
        with open(f"/tmp/{leave}-shared", "w") as f:
            f.write("left for the next run")
        shared_written = True
    except OSError:
        shared_written = False
    with open(os.path.join(tmp, leave), "w") as f:
        f.write("left for the next run")
    st = os.statvfs(tmp)
    written, error = 0, None
    chunk = b"x" * (1 << 20)
    try:
        with open(os.path.join(tmp, "fill"), "wb") as f:
            for _ in range(megabytes):
                f.write(chunk)
                f.flush()
                written += 1
    except OSError as exc:
        error = exc.strerror
    return {"tmp": tmp, "seen": seen, "shared_seen": shared_seen, "shared_written": shared_written,
            "size_mb": st.f_blocks * st.f_frsize // (1 << 20), "written_mb": written, "error": error}
