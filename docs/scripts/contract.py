"""The appendix's check: the numpy backend's kernels against the reference backend, small shapes."""
import scratchvae as sv

report = sv.check_backend("numpy", quick=True)
assert report.ok
