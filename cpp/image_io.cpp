#include "image_io.h"

#include <jpeglib.h>
#include <png.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <csetjmp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

namespace fastmtl {
namespace {

struct FileCloser {
  void operator()(FILE* f) const {
    if (f) std::fclose(f);
  }
};
using File = std::unique_ptr<FILE, FileCloser>;

File open_file(const std::string& path, const char* mode) {
  File f(std::fopen(path.c_str(), mode));
  if (!f) throw ImageError(std::string("cannot open file: ") + std::strerror(errno));
  return f;
}

std::string lower_extension(const std::string& path) {
  const auto dot = path.find_last_of('.');
  std::string ext = dot == std::string::npos ? "" : path.substr(dot);
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return ext;
}

// fastmtl.data.io.to_uint8 for 16-bit greyscale: 8-bit values pass, else scale by 12 or 16 bits.
void grey16_to_rgb8(const std::vector<uint16_t>& grey, RgbImage& out) {
  const uint16_t top = grey.empty() ? 0 : *std::max_element(grey.begin(), grey.end());
  const double full = top <= 255 ? 0.0 : (top <= 4095 ? 4095.0 : 65535.0);
  for (size_t i = 0; i < grey.size(); ++i) {
    const double v = full == 0.0 ? grey[i] : std::nearbyint(grey[i] * (255.0 / full));
    const uint8_t b = static_cast<uint8_t>(std::clamp(v, 0.0, 255.0));
    out.pixels[3 * i] = out.pixels[3 * i + 1] = out.pixels[3 * i + 2] = b;
  }
}

void png_error_fn(png_structp png, png_const_charp message) {
  *static_cast<std::string*>(png_get_error_ptr(png)) = message;
  png_longjmp(png, 1);
}
void png_warning_fn(png_structp, png_const_charp) {}

RgbImage read_png(const std::string& path) {
  File file = open_file(path, "rb");
  std::string error;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &error, png_error_fn, png_warning_fn);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) throw ImageError("out of memory");
  RgbImage out;
  std::vector<uint8_t> raw;
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw ImageError("corrupt PNG: " + error);
  }
  png_init_io(png, file.get());
  png_read_info(png, info);
  const int color = png_get_color_type(png, info);
  const int depth = png_get_bit_depth(png, info);
  const bool grey16 = depth == 16 && color == PNG_COLOR_TYPE_GRAY;
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (color & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  if (depth == 16 && !grey16) png_set_strip_16(png);  // keeps the high byte, as Pillow does
  if (grey16) png_set_swap(png);                      // host byte order for the uint16 read below
  if (!grey16 && !(color & PNG_COLOR_MASK_COLOR)) png_set_gray_to_rgb(png);
  png_read_update_info(png, info);
  out.width = static_cast<int>(png_get_image_width(png, info));
  out.height = static_cast<int>(png_get_image_height(png, info));
  const size_t stride = png_get_rowbytes(png, info);
  raw.resize(stride * out.height);
  rows.resize(out.height);
  for (int y = 0; y < out.height; ++y) rows[y] = raw.data() + stride * y;
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  out.pixels.resize(static_cast<size_t>(out.height) * out.width * 3);
  if (grey16) {
    std::vector<uint16_t> grey(static_cast<size_t>(out.height) * out.width);
    for (int y = 0; y < out.height; ++y)
      std::memcpy(&grey[static_cast<size_t>(y) * out.width], rows[y], out.width * sizeof(uint16_t));
    grey16_to_rgb8(grey, out);
  } else {
    for (int y = 0; y < out.height; ++y) std::memcpy(&out.pixels[static_cast<size_t>(y) * out.width * 3], rows[y], out.width * 3);
  }
  return out;
}

struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

RgbImage read_jpeg(const std::string& path) {
  File file = open_file(path, "rb");
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  RgbImage out;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    throw ImageError(std::string("corrupt JPEG: ") + err.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_stdio_src(&cinfo, file.get());
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    jpeg_destroy_decompress(&cinfo);
    throw ImageError("CMYK JPEG is not supported by fastmtl-infer");
  }
  cinfo.out_color_space = JCS_RGB;  // greyscale is replicated
  jpeg_start_decompress(&cinfo);
  out.width = static_cast<int>(cinfo.output_width);
  out.height = static_cast<int>(cinfo.output_height);
  out.pixels.resize(static_cast<size_t>(out.height) * out.width * 3);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = &out.pixels[static_cast<size_t>(cinfo.output_scanline) * out.width * 3];
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return out;
}

}  // namespace

RgbImage read_image(const std::string& path) {
  const std::string ext = lower_extension(path);
  if (ext == ".png") return read_png(path);
  if (ext == ".jpg" || ext == ".jpeg") return read_jpeg(path);
  throw ImageError("unsupported format " + ext + " (fastmtl-infer reads .png, .jpg and .jpeg)");
}

void write_png_gray(const std::string& path, const uint8_t* data, int height, int width) {
  File file = open_file(path, "wb");
  std::string error;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &error, png_error_fn, png_warning_fn);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) throw ImageError("out of memory");
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw ImageError("cannot write PNG: " + error);
  }
  png_init_io(png, file.get());
  png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < height; ++y) png_write_row(png, const_cast<png_bytep>(data + static_cast<size_t>(y) * width));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
}

}  // namespace fastmtl
