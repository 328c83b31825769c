// Pillow-compatible resampling of RGB8 images, as fastmtl.data.cache.resize_image calls it: a box filter when
// the output has fewer pixels than the input, bilinear otherwise; separable, horizontal pass first, 22-bit
// fixed-point weights and an 8-bit intermediate, exactly like Pillow's Resample.c, so both sides feed the model
// the same bytes.
#pragma once

#include <cstdint>
#include <vector>

#include "image_io.h"

namespace fastmtl {

enum class Filter { kBox, kBilinear };

// Resizes with the given filter (Pillow's ImagingResample for 8-bit RGB).
RgbImage resample(const RgbImage& image, int height, int width, Filter filter);

// resize_image(image, (height, width)): unchanged when the size already matches, box when shrinking the area,
// bilinear otherwise.
RgbImage resize_like_predict(const RgbImage& image, int height, int width);

}  // namespace fastmtl
