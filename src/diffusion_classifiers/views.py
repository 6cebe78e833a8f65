"""The views of an image a feature can be averaged over, for data with no natural orientation (plankton, cells,
microscopy): `None`, the image as it is, or `"dihedral"`, its 4 rotations by multiples of 90 degrees and those of its
mirror image (8 views)."""

from typing import List, Optional, Sequence

import torch

__all__ = ["VIEWS", "check_views", "image_views"]

VIEWS = (None, "dihedral")


def check_views(views: Optional[str], size: Optional[Sequence[int]] = None) -> None:
    """Refuse a `views` not in `VIEWS`, and `"dihedral"` for images of a non-square `size` (height, width)."""
    if views not in VIEWS:
        raise ValueError(f"unknown views {views!r}; expected one of {VIEWS}")
    if views == "dihedral" and size is not None and size[0] != size[1]:
        raise ValueError(f"views 'dihedral' rotates images by 90 degrees: expected square images, got size {tuple(size)}")


def image_views(images: torch.Tensor, views: Optional[str]) -> List[torch.Tensor]:
    """The views of a batch `[N, C, H, W]`: `[images]` for `None`; for `"dihedral"` (square images) the 4 rotations by
    90 degrees of the images and of their left-right mirror images. The 8 form a group, so a feature averaged over
    them is the same for an image and any of its views."""
    check_views(views, images.shape[-2:])
    if views is None:
        return [images]
    mirrored = images.flip(-1)
    # contiguous: the same view of two images is then the same tensor, strides included, and gets the same kernels
    return [x.rot90(k, dims=(-2, -1)).contiguous() for x in (images, mirrored) for k in range(4)]
