// Image decoding (PNG via libpng, JPEG via libjpeg) to RGB8 and 8-bit greyscale PNG writing, following
// fastmtl.data.io.read_image: greyscale is replicated, alpha dropped (not composited), palettes expanded,
// 16-bit colour keeps the high byte, 16-bit greyscale is scaled by its bit depth (12-bit when max <= 4095).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastmtl {

struct RgbImage {
  int height = 0;
  int width = 0;
  std::vector<uint8_t> pixels;  // (height, width, 3) row-major
};

// Any decoding failure: the message names the reason (the caller adds the path).
class ImageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Reads a .png, .jpg or .jpeg file; throws ImageError for other formats and unreadable files.
RgbImage read_image(const std::string& path);

// Writes a (height, width) uint8 single-channel PNG; throws ImageError on failure.
void write_png_gray(const std::string& path, const uint8_t* data, int height, int width);

}  // namespace fastmtl
