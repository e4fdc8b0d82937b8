"""Test-suite hooks shared by every test file."""


def pytest_collection_modifyitems(session, config, items):
    """Files with end-to-end tests (marked `slow`) first, in their collected order, then the rest.

    `make test` runs whole files on parallel workers (pytest-xdist `--dist loadfile`), handed out
    in this order: the long files then start first, instead of one worker finishing the run
    alone on the distributed-training file while the other idles. Without workers the order
    changes nothing that a test may rely on (each file keeps its own order)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within files is kept
