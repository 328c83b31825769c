// fastmtl-infer: batch prediction with an AOTInductor package exported by `fastmtl export --format aoti`.
//
// Reads PNG/JPEG images, resizes them to the model size as fastmtl.data.cache.resize_image does (Pillow box /
// bilinear, reproduced bit for bit), normalises with the package's mean/std, runs batches through
// torch::inductor::AOTIModelPackageLoader and writes what `fastmtl predict` writes: masks/<id>.png at each
// image's original size (binary: 0/255; multi-class: class indices), probabilities.csv with the same columns
// and failures.csv for unreadable files. Everything the pre/post-processing needs is read from the package
// metadata (see fastmtl/engine/export.py).
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "image_io.h"
#include "resize.h"

namespace fs = std::filesystem;
using fastmtl::RgbImage;

namespace {

const char* kUsage =
    "usage: fastmtl-infer --package MODEL.pt2 --out DIR [--batch-size N] [--threshold T] [--threads N] "
    "INPUT [INPUT ...]\n"
    "  INPUT: image files (.png, .jpg, .jpeg), folders (searched recursively) or text files listing paths.\n"
    "  Writes DIR/masks/<id>.png, DIR/probabilities.csv and, if some inputs fail, DIR/failures.csv.\n"
    "  --output is accepted as an alias of --out, as in the fastmtl command line.\n";

struct Options {
  std::string package, output;
  std::vector<std::string> inputs;
  int batch_size = 8;
  float threshold = 0.5f;
  int threads = 0;
};

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument("missing value for " + a);
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (a == "--package") {
      o.package = value();
    } else if (a == "--out" || a == "--output") {
      o.output = value();
    } else if (a == "--batch-size") {
      o.batch_size = std::stoi(value());
    } else if (a == "--threshold") {
      o.threshold = std::stof(value());
    } else if (a == "--threads") {
      o.threads = std::stoi(value());
    } else if (!a.empty() && a[0] == '-') {
      throw std::invalid_argument("unknown option " + a);
    } else {
      o.inputs.push_back(a);
    }
  }
  if (o.package.empty() || o.output.empty() || o.inputs.empty())
    throw std::invalid_argument("--package, --out and at least one INPUT are required");
  if (o.batch_size < 1) throw std::invalid_argument("--batch-size must be at least 1");
  return o;
}

// ----------------------------------------------------------------------------------------------- inputs
const std::set<std::string> kImageExtensions = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"};  // as predict

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool is_image(const fs::path& p) { return kImageExtensions.count(lower(p.extension().string())) > 0; }

void expand(const fs::path& item, const fs::path& base, std::vector<fs::path>& out) {
  fs::path p = item;
  if (!base.empty() && p.is_relative() && !fs::exists(p) && fs::exists(base / p)) p = base / p;
  if (fs::is_directory(p)) {
    for (const auto& e : fs::recursive_directory_iterator(p))
      if (e.is_regular_file() && is_image(e.path())) out.push_back(e.path());
  } else if (fs::is_regular_file(p) && !is_image(p)) {  // a list file: one path per line, '#' comments
    std::ifstream in(p);
    for (std::string line; std::getline(in, line);) {
      line.erase(0, line.find_first_not_of(" \t\r"));
      line.erase(line.find_last_not_of(" \t\r") + 1);
      if (!line.empty() && line[0] != '#') expand(line, p.parent_path(), out);
    }
  } else {
    out.push_back(p);  // a missing file is reported as a failure
  }
}

// fastmtl.engine.predict.collect_inputs: absolute, de-duplicated, sorted, minus what lies in the output folder.
std::vector<fs::path> collect_inputs(const Options& o) {
  std::vector<fs::path> found;
  for (const auto& item : o.inputs) expand(item, {}, found);
  const std::string skip = fs::absolute(o.output).lexically_normal().string() + "/";
  std::set<std::string> unique;
  for (const auto& p : found) {
    const std::string abs = fs::absolute(p).lexically_normal().string();
    if (abs.rfind(skip, 0) != 0) unique.insert(abs);
  }
  return {unique.begin(), unique.end()};
}

std::string safe_name(const std::string& text) {  // fastmtl.engine.evaluate.safe_name
  std::string s = std::regex_replace(text, std::regex("[^A-Za-z0-9._-]+"), "_");
  const auto first = s.find_first_not_of("._");
  if (first == std::string::npos) return "image";
  return s.substr(first, s.find_last_not_of("._") - first + 1);
}

// fastmtl.engine.predict.image_ids: path below the common folder, separators as "__", no suffix.
std::vector<std::string> image_ids(const std::vector<fs::path>& paths) {
  fs::path root = paths.front().parent_path();
  for (const auto& p : paths) {
    fs::path common;
    auto a = root.begin();
    for (auto b = p.parent_path().begin(); a != root.end() && b != p.parent_path().end() && *a == *b; ++a, ++b)
      common /= *a;
    root = common;
  }
  std::vector<std::string> ids;
  for (const auto& p : paths) {
    std::string rel = fs::path(p).replace_extension().lexically_relative(root).string();
    for (size_t at; (at = rel.find('/')) != std::string::npos;) rel.replace(at, 1, "__");
    ids.push_back(safe_name(rel));
  }
  std::map<std::string, int> counts, seen;
  for (const auto& id : ids) ++counts[id];
  for (size_t i = 0; i < ids.size(); ++i) {
    if (counts[ids[i]] < 2) continue;
    const std::string ext = paths[i].extension().string();
    const std::string candidate = ids[i] + "_" + lower(ext.empty() ? ext : ext.substr(1));
    const int n = ++seen[candidate];
    ids[i] = n == 1 ? candidate : candidate + "_" + std::to_string(n);
  }
  return ids;
}

// ----------------------------------------------------------------------------------------------- metadata
struct ModelInfo {
  int img_size = 0, in_chans = 3, seg_classes = 0, cls_classes = 0;
  std::vector<float> mean, std;
  std::vector<std::string> class_names, seg_names, outputs;
  torch::Device device = torch::kCPU;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, ',');) parts.push_back(part);
  return parts;
}

ModelInfo read_info(const std::unordered_map<std::string, std::string>& meta) {
  auto get = [&](const std::string& key) {
    auto it = meta.find(key);
    if (it == meta.end()) throw std::runtime_error("package metadata lacks '" + key + "'; export it with fastmtl");
    return it->second;
  };
  ModelInfo m;
  m.img_size = std::stoi(get("img_size"));
  m.in_chans = std::stoi(get("in_chans"));
  m.seg_classes = std::stoi(get("seg_classes"));
  m.cls_classes = std::stoi(get("cls_classes"));
  for (const auto& v : split(get("mean"))) m.mean.push_back(std::stof(v));
  for (const auto& v : split(get("std"))) m.std.push_back(std::stof(v));
  m.class_names = split(get("class_names"));
  m.seg_names = split(get("seg_class_names"));
  m.outputs = split(get("outputs"));
  auto dev = meta.find("AOTI_DEVICE_KEY");
  if (dev != meta.end() && dev->second.rfind("cuda", 0) == 0) m.device = torch::Device(dev->second);
  return m;
}

// (C, S, S) float32, normalised exactly as fastmtl.data.transforms.normalize_image (luminance for 1 channel).
torch::Tensor to_input(const RgbImage& img, const ModelInfo& m) {
  const int n = img.height * img.width;
  torch::Tensor t = torch::empty({m.in_chans, img.height, img.width}, torch::kFloat32);
  float* out = t.data_ptr<float>();
  for (int i = 0; i < n; ++i) {
    const uint8_t* px = &img.pixels[3 * i];
    if (m.in_chans == 1) {
      const float luma = static_cast<float>(px[0]) * 0.299f + static_cast<float>(px[1]) * 0.587f +
                         static_cast<float>(px[2]) * 0.114f;
      const float u8 = std::nearbyint(luma);  // torch.round: half to even
      out[i] = (u8 - m.mean[0]) / m.std[0];
    } else {
      for (int c = 0; c < m.in_chans; ++c) out[c * n + i] = (static_cast<float>(px[c]) - m.mean[c]) / m.std[c];
    }
  }
  return t;
}

// ----------------------------------------------------------------------------------------------- outputs
std::string csv_field(const std::string& s) {  // Python's csv.QUOTE_MINIMAL
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string fixed6(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6f", v);
  return buf;
}

using Row = std::vector<std::pair<std::string, std::string>>;

void write_csv(const fs::path& path, const std::vector<Row>& rows, const std::vector<std::string>& empty_header) {
  std::vector<std::string> header = empty_header;
  if (!rows.empty()) {
    header.clear();
    for (const auto& [k, v] : rows.front()) header.push_back(k);
  }
  std::ofstream out(path.string() + ".tmp", std::ios::binary);
  for (size_t i = 0; i < header.size(); ++i) out << (i ? "," : "") << csv_field(header[i]);
  out << "\n";
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) out << (i ? "," : "") << csv_field(row[i].second);
    out << "\n";
  }
  out.close();
  fs::rename(path.string() + ".tmp", path);
}

struct Pending {
  size_t index;
  RgbImage image;  // original
};

// Runs one batch and appends a CSV row per image.
void run_batch(torch::inductor::AOTIModelPackageLoader& loader, const ModelInfo& m, const Options& o,
               const std::vector<fs::path>& paths, const std::vector<std::string>& ids, std::vector<Pending>& batch,
               const fs::path& mask_dir, std::vector<Row>& rows) {
  std::vector<torch::Tensor> inputs;
  for (const auto& p : batch)
    inputs.push_back(to_input(fastmtl::resize_like_predict(p.image, m.img_size, m.img_size), m));
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> outs = loader.run({torch::stack(inputs).to(m.device)});
  torch::Tensor seg, probs;
  for (size_t i = 0; i < m.outputs.size() && i < outs.size(); ++i) {
    if (m.outputs[i] == "seg_logits") seg = outs[i].to(torch::kCPU, torch::kFloat32);
    if (m.outputs[i] == "cls_logits") probs = torch::sigmoid(outs[i].to(torch::kCPU, torch::kFloat32)).contiguous();
  }
  for (size_t b = 0; b < batch.size(); ++b) {
    const size_t k = batch[b].index;
    Row row = {{"path", paths[k].string()}, {"id", ids[k]}};
    if (probs.defined()) {
      const float* p = probs[b].data_ptr<float>();
      for (int c = 0; c < m.cls_classes; ++c) row.emplace_back("prob_" + m.class_names[c], fixed6(p[c]));
      for (int c = 0; c < m.cls_classes; ++c)
        row.emplace_back("pred_" + m.class_names[c], p[c] > o.threshold ? "1" : "0");
    }
    if (seg.defined()) {
      const int h = batch[b].image.height, w = batch[b].image.width;
      namespace F = torch::nn::functional;
      torch::Tensor up = F::interpolate(seg.slice(0, b, b + 1), F::InterpolateFuncOptions()
                                                                    .size(std::vector<int64_t>{h, w})
                                                                    .mode(torch::kBilinear)
                                                                    .align_corners(false));
      torch::Tensor mask = m.seg_classes == 1 ? (torch::sigmoid(up[0][0]) > o.threshold).to(torch::kUInt8)
                                              : up[0].argmax(0).to(torch::kUInt8);
      mask = mask.contiguous();
      const double n = static_cast<double>(h) * w;
      row.emplace_back("area_fraction", fixed6((mask > 0).sum().item<int64_t>() / n));
      if (m.seg_classes > 1)
        for (int c = 1; c < m.seg_classes; ++c)
          row.emplace_back("area_" + m.seg_names[c - 1], fixed6((mask == c).sum().item<int64_t>() / n));
      torch::Tensor stored = m.seg_classes == 1 ? mask * 255 : mask;
      stored = stored.to(torch::kUInt8).contiguous();
      fastmtl::write_png_gray((mask_dir / (ids[k] + ".png")).string(), stored.data_ptr<uint8_t>(), h, w);
      row.emplace_back("mask", ids[k] + ".png");
    }
    rows.push_back(std::move(row));
  }
  batch.clear();
}

int run(const Options& o) {
  if (o.threads > 0) torch::set_num_threads(o.threads);
  torch::inductor::AOTIModelPackageLoader loader(o.package);
  const ModelInfo m = read_info(loader.get_metadata());
  const std::vector<fs::path> paths = collect_inputs(o);
  if (paths.empty()) throw std::invalid_argument("no images found in the inputs");
  const std::vector<std::string> ids = image_ids(paths);
  const fs::path mask_dir = fs::path(o.output) / "masks";
  fs::create_directories(mask_dir);
  std::vector<Row> rows, failures;
  std::vector<Pending> batch;
  const auto start = std::chrono::steady_clock::now();
  for (size_t k = 0; k < paths.size(); ++k) {
    try {
      batch.push_back({k, fastmtl::read_image(paths[k].string())});
    } catch (const std::exception& e) {
      const std::string reason = fs::is_regular_file(paths[k]) ? e.what() : "no such file";
      failures.push_back({{"path", paths[k].string()}, {"reason", reason}});
      std::cerr << "skipped " << paths[k].string() << ": " << reason << "\n";
    }
    if (static_cast<int>(batch.size()) == o.batch_size || (k + 1 == paths.size() && !batch.empty()))
      run_batch(loader, m, o, paths, ids, batch, mask_dir, rows);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  write_csv(fs::path(o.output) / "probabilities.csv", rows, {"path", "id"});  // rows are in path order already
  if (!failures.empty()) write_csv(fs::path(o.output) / "failures.csv", failures, {"path", "reason"});
  std::cout << "predicted " << rows.size() << " image(s), " << failures.size() << " failed, in " << seconds
            << " s; CSV " << (fs::path(o.output) / "probabilities.csv").string() << "\n";
  return rows.empty() && !failures.empty() ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const std::invalid_argument& e) {
    std::cerr << "fastmtl-infer: error: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "fastmtl-infer: error: " << e.what() << "\n";
    return 2;
  }
}
