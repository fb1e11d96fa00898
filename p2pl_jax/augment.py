"""Data augmentation of one batch, drawn in the jitted local step from the device's key.

`crop_flip` is the CIFAR recipe of He et al. (2016, Sec. 4.2) as torchvision writes it
(RandomCrop(32, padding=4) then RandomHorizontalFlip()): every image is padded with 4 zero
pixels on each side, a window of the original size is cut at a uniformly random offset
(0..8 in each direction, 81 positions), and the result is mirrored left-right with
probability 1/2. Every example of the batch has its own draws. The padding is applied to the
stored images, before normalisation: for uint8 pixels a zero is black (as torchvision pads a
PIL image), for float inputs it is 0 in the input's own scale.
"""

import jax
import jax.numpy as jnp

PAD = 4


def crop_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Random crop (zero padding PAD) and horizontal flip of images [B, H, W, C], per example."""
    b, h, w, c = images.shape
    k_crop, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * PAD + 1)
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    padded = jnp.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    crops = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
        padded, offsets)
    return jnp.where(flip[:, None, None, None], crops[:, :, ::-1], crops)
