#include "resize.h"

#include <algorithm>
#include <cmath>

namespace fastmtl {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS for 8-bit images

double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_filter(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// One axis of Pillow's precompute_coeffs + normalize_coeffs_8bpc: per output index the first input index,
// the tap count, and ksize fixed-point weights.
struct Coeffs {
  int ksize = 0;
  std::vector<int> start, count;
  std::vector<int32_t> weights;  // (out_size, ksize)
};

Coeffs precompute(int in_size, int out_size, Filter filter) {
  const double support_unit = filter == Filter::kBox ? 0.5 : 1.0;
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = support_unit * filterscale;
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.start.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);  // truncation toward zero, as in C
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double arg = (x + xmin - center + 0.5) * ss;
      k[x] = filter == Filter::kBox ? box_filter(arg) : bilinear_filter(arg);
      ww += k[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double w = ww != 0.0 ? k[x] / ww : k[x];
      c.weights[static_cast<size_t>(xx) * c.ksize + x] =
          static_cast<int32_t>(w < 0 ? -0.5 + w * (1 << kPrecisionBits) : 0.5 + w * (1 << kPrecisionBits));
    }
    c.start[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

uint8_t clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Horizontal pass over input rows [row0, row0 + rows).
RgbImage horizontal(const RgbImage& in, int row0, int rows, int out_w, const Coeffs& c) {
  RgbImage out{rows, out_w, std::vector<uint8_t>(static_cast<size_t>(rows) * out_w * 3)};
  for (int y = 0; y < rows; ++y) {
    const uint8_t* src = &in.pixels[static_cast<size_t>(y + row0) * in.width * 3];
    uint8_t* dst = &out.pixels[static_cast<size_t>(y) * out_w * 3];
    for (int xx = 0; xx < out_w; ++xx) {
      const int32_t* k = &c.weights[static_cast<size_t>(xx) * c.ksize];
      for (int ch = 0; ch < 3; ++ch) {
        int32_t acc = 1 << (kPrecisionBits - 1);
        for (int x = 0; x < c.count[xx]; ++x) acc += src[(x + c.start[xx]) * 3 + ch] * k[x];
        dst[xx * 3 + ch] = clip8(acc);
      }
    }
  }
  return out;
}

// Vertical pass; c.start is relative to the first row of ``in``.
RgbImage vertical(const RgbImage& in, int out_h, const Coeffs& c, int offset) {
  RgbImage out{out_h, in.width, std::vector<uint8_t>(static_cast<size_t>(out_h) * in.width * 3)};
  const size_t row = static_cast<size_t>(in.width) * 3;
  for (int yy = 0; yy < out_h; ++yy) {
    const int32_t* k = &c.weights[static_cast<size_t>(yy) * c.ksize];
    const int y0 = c.start[yy] - offset;
    for (size_t i = 0; i < row; ++i) {
      int32_t acc = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < c.count[yy]; ++y) acc += in.pixels[(y + y0) * row + i] * k[y];
      out.pixels[yy * row + i] = clip8(acc);
    }
  }
  return out;
}

}  // namespace

RgbImage resample(const RgbImage& image, int height, int width, Filter filter) {
  const bool need_h = width != image.width;
  const bool need_v = height != image.height;
  const Coeffs ch = precompute(image.width, width, filter);
  const Coeffs cv = precompute(image.height, height, filter);
  // Pillow only runs the horizontal pass over the input rows the vertical pass will read.
  const int first = cv.start.front();
  const int last = cv.start.back() + cv.count.back();
  RgbImage out = image;
  int offset = 0;
  if (need_h) {
    out = horizontal(image, first, last - first, width, ch);
    offset = first;
  }
  if (need_v) out = vertical(out, height, cv, offset);
  return out;
}

RgbImage resize_like_predict(const RgbImage& image, int height, int width) {
  if (image.height == height && image.width == width) return image;
  const bool shrinking = static_cast<long long>(height) * width < static_cast<long long>(image.height) * image.width;
  return resample(image, height, width, shrinking ? Filter::kBox : Filter::kBilinear);
}

}  // namespace fastmtl
