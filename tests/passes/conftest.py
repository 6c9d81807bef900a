"""``--regen-golden``: rewrite tests/passes/golden/*.ir from the passes instead of comparing."""


def pytest_addoption(parser):
    parser.addoption(
        "--regen-golden",
        action="store_true",
        default=False,
        help="rewrite tests/passes/golden/*.ir from the current passes (review the diff before committing)",
    )
