// CTest `image_ops`: Pillow-compatible resizing (checksums computed with fastmtl.data.cache.resize_image, i.e.
// Pillow) and a PNG write/read round trip. Usage: fastmtl_image_tests SCRATCH_DIR
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "image_io.h"
#include "resize.h"

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

// The 5x7 test pattern: value (x * 37 + y * 91 + c * 53) % 256.
fastmtl::RgbImage pattern() {
  fastmtl::RgbImage img{5, 7, std::vector<uint8_t>(5 * 7 * 3)};
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 7; ++x)
      for (int c = 0; c < 3; ++c) img.pixels[(y * 7 + x) * 3 + c] = static_cast<uint8_t>((x * 37 + y * 91 + c * 53) % 256);
  return img;
}

struct Expected {
  int height, width;
  uint64_t sum, weighted;  // weighted: sum of (i + 1) * value mod 2^32
};

void test_resize() {
  const fastmtl::RgbImage img = pattern();
  const Expected cases[] = {{3, 4, 4648, 85495},     {11, 9, 38368, 5710366},         {5, 3, 5815, 135450},
                            {2, 13, 10009, 397957}, {224, 224, 19419343, 1889001664}};
  for (const auto& e : cases) {
    const fastmtl::RgbImage out = fastmtl::resize_like_predict(img, e.height, e.width);
    uint64_t sum = 0, weighted = 0;
    for (size_t i = 0; i < out.pixels.size(); ++i) {
      sum += out.pixels[i];
      weighted = (weighted + (i + 1) * out.pixels[i]) % (1ull << 32);
    }
    const std::string name = "resize to " + std::to_string(e.height) + "x" + std::to_string(e.width);
    check(out.height == e.height && out.width == e.width, name + ": shape");
    check(sum == e.sum && weighted == e.weighted, name + ": sum " + std::to_string(sum) + " weighted " +
                                                      std::to_string(weighted) + " differ from Pillow");
  }
  check(fastmtl::resize_like_predict(img, 5, 7).pixels == img.pixels, "same-size resize is the identity");
}

void test_png_round_trip(const std::string& dir) {
  std::vector<uint8_t> mask(6 * 10);
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = (i % 3 == 0) ? 255 : 0;
  const std::string path = dir + "/image_ops_mask.png";
  fastmtl::write_png_gray(path, mask.data(), 6, 10);
  const fastmtl::RgbImage back = fastmtl::read_image(path);
  bool same = back.height == 6 && back.width == 10;
  for (size_t i = 0; same && i < mask.size(); ++i)
    same = back.pixels[3 * i] == mask[i] && back.pixels[3 * i + 1] == mask[i] && back.pixels[3 * i + 2] == mask[i];
  check(same, "PNG round trip (greyscale replicated to RGB)");
  bool threw = false;
  try {
    fastmtl::read_image(dir + "/does_not_exist.jpg");
  } catch (const fastmtl::ImageError&) {
    threw = true;
  }
  check(threw, "a missing file raises ImageError");
}

}  // namespace

int main(int argc, char** argv) {
  test_resize();
  test_png_round_trip(argc > 1 ? argv[1] : ".");
  if (failures == 0) std::printf("image_ops: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
