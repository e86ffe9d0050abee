"""Severity parameter tables of the CIFAR-10-C and ImageNet-C generators.

The numbers are those of Hendrycks & Dietterich's reference generators
(`make_cifar_c.py` for 32x32 images, `make_imagenet_c.py` for 224x224 images,
github.com/hendrycks/robustness, ImageNet-C/create_c/). Entry ``k`` of each tuple
is severity ``k + 1``. The meaning of each tuple element is documented next to it
and again in the docstring of the corruption that uses it.

Two corruptions are not part of the benchmarks; they are the training
corruptions of the Auxiliary Training paper (Zhang et al.), whose released code
uses ``RandomRotation(30)`` and ``ColorJitter(brightness=0.5, contrast=0.5,
saturation=0.5)``. Their severity 5 equals that setting and severities 1-4 scale
it linearly; the same values are used for both tables.
"""

CIFAR = 'cifar'
IMAGENET = 'imagenet'
TABLES = (CIFAR, IMAGENET)

# Images whose larger side is at most this many pixels use the CIFAR table.
CIFAR_MAX_SIZE = 64

_AUX_TRAINING = {
    # Maximum absolute rotation angle in degrees; the angle is U(-a, a).
    'rotation': (6.0, 12.0, 18.0, 24.0, 30.0),
    # ColorJitter strength r: brightness, contrast and saturation factors are
    # each U(1 - r, 1 + r).
    'contrast_brightness': (0.1, 0.2, 0.3, 0.4, 0.5),
}

PARAMS = {
    CIFAR: {
        # Standard deviation of additive Gaussian noise.
        'gaussian_noise': (0.04, 0.06, 0.08, 0.09, 0.10),
        # Photon count c: output = Poisson(c * x) / c.
        'shot_noise': (500, 250, 100, 75, 50),
        # Fraction of values replaced by salt (1) or pepper (0).
        'impulse_noise': (0.01, 0.02, 0.03, 0.05, 0.07),
        # (disk radius, anti-alias Gaussian sigma).
        'defocus_blur': ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        # (Gaussian sigma, max pixel displacement, shuffle iterations).
        'glass_blur': ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        # (ImageMagick radius, sigma); the angle is U(-45, 45) degrees.
        'motion_blur': ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
        # np.arange(start, stop, step) of zoom factors.
        'zoom_blur': ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01),
                      (1, 1.21, 0.01), (1, 1.26, 0.01)),
        # (mean, std, zoom, threshold, blur radius, blur sigma, image weight).
        'snow': ((0.1, 0.2, 1, 0.6, 8, 3, 0.95),
                 (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                 (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                 (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                 (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
        # (image weight, frost weight).
        'frost': ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
        # (fog strength, plasma-fractal wibble decay).
        'fog': ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        # Added to the HSV value channel.
        'brightness': (0.05, 0.1, 0.15, 0.2, 0.3),
        # Factor applied to deviations from the per-channel mean.
        'contrast': (0.75, 0.5, 0.4, 0.3, 0.15),
        # (alpha, sigma, affine jitter) as fractions of the image size (the
        # reference writes IMSIZE * fraction with IMSIZE = 32).
        'elastic_transform': ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                              (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
        # Downscale factor of the box-filter resize.
        'pixelate': (0.95, 0.9, 0.85, 0.75, 0.65),
        # JPEG quality.
        'jpeg_compression': (80, 65, 58, 50, 40),
        # Standard deviation of multiplicative Gaussian noise.
        'speckle_noise': (0.06, 0.1, 0.12, 0.16, 0.2),
        # Gaussian sigma in pixels.
        'gaussian_blur': (0.4, 0.6, 0.7, 0.8, 1),
        # (mean, std, sigma, threshold, intensity or mud sigma, mode 0=water 1=mud).
        'spatter': ((0.62, 0.1, 0.7, 0.7, 0.5, 0),
                    (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                    (0.65, 0.3, 1, 0.69, 0.5, 0),
                    (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                    (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
        # (saturation factor, saturation offset) on the HSV saturation channel.
        'saturate': ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
        **_AUX_TRAINING,
    },
    IMAGENET: {
        'gaussian_noise': (0.08, 0.12, 0.18, 0.26, 0.38),
        'shot_noise': (60, 25, 12, 5, 3),
        'impulse_noise': (0.03, 0.06, 0.09, 0.17, 0.27),
        'defocus_blur': ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        'glass_blur': ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        'motion_blur': ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        'zoom_blur': ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02),
                      (1, 1.26, 0.02), (1, 1.31, 0.03)),
        'snow': ((0.1, 0.3, 3, 0.5, 10, 4, 0.8),
                 (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                 (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                 (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
        'frost': ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        'fog': ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),
        'brightness': (0.1, 0.2, 0.3, 0.4, 0.5),
        'contrast': (0.4, 0.3, 0.2, 0.1, 0.05),
        # (alpha, sigma, affine jitter) in pixels. The reference multiplies
        # fractions by 244 (a typo for 224 that it keeps deliberately).
        'elastic_transform': ((244 * 2, 244 * 0.7, 244 * 0.1),
                              (244 * 2, 244 * 0.08, 244 * 0.2),
                              (244 * 0.05, 244 * 0.01, 244 * 0.02),
                              (244 * 0.07, 244 * 0.01, 244 * 0.02),
                              (244 * 0.12, 244 * 0.01, 244 * 0.02)),
        'pixelate': (0.6, 0.5, 0.4, 0.3, 0.25),
        'jpeg_compression': (25, 18, 15, 10, 7),
        'speckle_noise': (0.15, 0.2, 0.35, 0.45, 0.6),
        'gaussian_blur': (1, 2, 3, 4, 6),
        'spatter': ((0.65, 0.3, 4, 0.69, 0.6, 0),
                    (0.65, 0.3, 3, 0.68, 0.6, 0),
                    (0.65, 0.3, 2, 0.68, 0.5, 0),
                    (0.65, 0.3, 1, 0.65, 1.5, 1),
                    (0.67, 0.4, 1, 0.65, 1.5, 1)),
        'saturate': ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
        **_AUX_TRAINING,
    },
}
