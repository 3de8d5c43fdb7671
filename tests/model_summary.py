"""The reference model's ``model.summary()`` table (layer, output shape, params), as data.

Transcribed from the specification's summary table at 512x512x3, 21 classes; the
architecture test compares the built model against it row by row.
"""

SEED_SUMMARY = [
    ("input_1", (512, 512, 3), 0),
    ("conv1-1", (512, 512, 64), 1792),
    ("conv1-2", (512, 512, 64), 36928),
    ("pool1", (256, 256, 64), 0),
    ("conv2-1", (256, 256, 128), 73856),
    ("conv2-2", (256, 256, 128), 147584),
    ("pool2", (128, 128, 128), 0),
    ("conv3-1", (128, 128, 256), 295168),
    ("conv3-2", (128, 128, 256), 590080),
    ("conv3-3", (128, 128, 256), 590080),
    ("conv3-4", (128, 128, 256), 590080),
    ("pool3", (64, 64, 256), 0),
    ("conv4-1", (64, 64, 512), 1180160),
    ("conv4-2", (64, 64, 512), 2359808),
    ("conv4-3", (64, 64, 512), 2359808),
    ("conv4-4", (64, 64, 512), 2359808),
    ("pool4", (32, 32, 512), 0),
    ("conv5-1", (32, 32, 512), 2359808),
    ("conv5-2", (32, 32, 512), 2359808),
    ("conv5-3", (32, 32, 512), 2359808),
    ("conv5-4", (32, 32, 512), 2359808),
    ("up_sampling2d", (64, 64, 512), 0),
    ("concatenate", (64, 64, 1024), 0),
    ("conv2d", (64, 64, 512), 4719104),
    ("conv2d_1", (64, 64, 512), 2359808),
    ("up_sampling2d_1", (128, 128, 512), 0),
    ("concatenate_1", (128, 128, 768), 0),
    ("conv2d_2", (128, 128, 256), 1769728),
    ("conv2d_3", (128, 128, 256), 590080),
    ("up_sampling2d_2", (256, 256, 256), 0),
    ("concatenate_2", (256, 256, 384), 0),
    ("conv2d_4", (256, 256, 128), 442496),
    ("conv2d_5", (256, 256, 128), 147584),
    ("up_sampling2d_3", (512, 512, 128), 0),
    ("concatenate_3", (512, 512, 192), 0),
    ("conv2d_6", (512, 512, 64), 110656),
    ("conv2d_7", (512, 512, 64), 36928),
    ("conv2d_8", (512, 512, 21), 1365),
]
#: The reference model's "Connected to" column for the four concatenations: (skip, upsampled).
SEED_CONCATS = {
    "concatenate": ("conv4-4", "up_sampling2d"),
    "concatenate_1": ("conv3-4", "up_sampling2d_1"),
    "concatenate_2": ("conv2-2", "up_sampling2d_2"),
    "concatenate_3": ("conv1-2", "up_sampling2d_3"),
}
