"""Whether a tqdm bar is shown, as tqdm arguments."""

__all__ = ["bar_visibility"]


def bar_visibility(shown: bool) -> dict:
    """The tqdm arguments of a bar `shown` or hidden. A shown bar leaves `disable` to tqdm, so that `TQDM_DISABLE=1`
    still silences it: an explicit `disable=False` would override the environment."""
    return {} if shown else {"disable": True}
