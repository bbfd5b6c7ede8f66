"""Start-up preflight: which filesystem holds the inbox, and whether only polling can see its writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.pipeline.observer import filesystem_type, is_network_fs

MOUNTINFO = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:40 / /mnt/nfs rw,relatime shared:2 - nfs4 server:/export rw,vers=4.2
31 22 0:41 / /mnt/smb\\040share rw,relatime shared:3 - cifs //srv/share rw
32 22 0:42 / /mnt/fuse rw,relatime shared:4 - fuse.sshfs user@host: rw
33 30 0:43 / /mnt/nfs/local rw,relatime shared:5 - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(
    ("path", "fstype", "network"),
    [
        ("/data/inbox", "ext4", False),
        ("/mnt/nfs/inbox", "nfs4", True),
        ("/mnt/nfs/local/inbox", "tmpfs", False),  # the longest mount point wins
        ("/mnt/smb share/in", "cifs", True),
        ("/mnt/fuse/in", "fuse.sshfs", True),
        ("/mnt/nfsx/in", "ext4", False),  # a prefix of a mount point is not inside it
    ],
)
def test_filesystem_type_from_mountinfo(tmp_path: Path, path: str, fstype: str, network: bool) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert filesystem_type(Path(path), str(info)) == fstype
    assert is_network_fs(fstype) is network


def test_unreadable_mountinfo_is_unknown(tmp_path: Path) -> None:
    assert filesystem_type(tmp_path, str(tmp_path / "missing")) == "unknown"
    assert not is_network_fs("unknown")
