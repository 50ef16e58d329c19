"""Fault injection for the local Hub, so tests can see how the client and our workers cope with a flaky Hub.

One `Faults` object is shared by the app and the test: the server reads its fields on every request, so a
test can change them between (or during) requests without restarting anything. Counters count down: "the
next N commit calls fail", which is what a retry test needs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Faults:
    fail_commits: int = 0  # the next N commit calls answer 500
    fail_all_commits: bool = False  # every commit call answers 500 (a permanent outage)
    fail_lfs_puts: int = 0  # the next N LFS PUTs (single part or one part of a multipart upload) answer 500
    fail_downloads: int = 0  # the next N file GETs (`/resolve/`) answer 500
    fail_all_downloads: bool = False  # every file GET answers 500
    fail_info: int = 0  # the next N repo-info GETs (`/api/{models,datasets}/ns/name[/revision/r]`) answer 500
    delay_s: float = 0.0  # added before answering each request whose path contains `delay_match`
    delay_match: str = ""  # "" matches every path; e.g. "/resolve/" slows downloads, "/_lfs/" uploads
    commit_calls: int = 0  # observed calls, failed ones included
    lfs_put_calls: int = 0
    download_calls: int = 0
    info_calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def on_commit(self) -> bool:
        """Count a commit call; True if it must fail."""
        with self._lock:
            self.commit_calls += 1
            if self.fail_all_commits:
                return True
            if self.fail_commits > 0:
                self.fail_commits -= 1
                return True
            return False

    def on_lfs_put(self) -> bool:
        """Count an LFS PUT; True if it must fail."""
        with self._lock:
            self.lfs_put_calls += 1
            if self.fail_lfs_puts > 0:
                self.fail_lfs_puts -= 1
                return True
            return False

    def on_download(self) -> bool:
        """Count a file GET; True if it must fail."""
        with self._lock:
            self.download_calls += 1
            if self.fail_all_downloads:
                return True
            if self.fail_downloads > 0:
                self.fail_downloads -= 1
                return True
            return False

    def on_info(self) -> bool:
        """Count a repo-info GET; True if it must fail."""
        with self._lock:
            self.info_calls += 1
            if self.fail_info > 0:
                self.fail_info -= 1
                return True
            return False

    def delay_for(self, path: str) -> float:
        return self.delay_s if self.delay_s > 0 and self.delay_match in path else 0.0

    def reset(self) -> None:
        """Back to a healthy Hub, counters at zero."""
        with self._lock:
            self.fail_commits = self.lfs_put_calls = self.commit_calls = self.fail_lfs_puts = 0
            self.fail_downloads = self.download_calls = self.fail_info = self.info_calls = 0
            self.fail_all_commits = self.fail_all_downloads = False
            self.delay_s = 0.0
            self.delay_match = ""
