"""Source code that makes packages unimportable in a fresh interpreter (for subprocess tests)."""


def block_imports(*packages: str) -> str:
    """Python source to run first in a subprocess: importing any of ``packages``
    (or their submodules) then raises ImportError, as on a machine without them."""
    return f"""
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {tuple(packages)!r}:
            raise ImportError(name + " is blocked by the test")
sys.meta_path.insert(0, _Blocked())
for _m in list(sys.modules):
    if _m.split(".")[0] in {tuple(packages)!r}:
        del sys.modules[_m]
"""
