// Loads a TorchScript export of nasfast (python -m nasfast.export), runs a binary PPM image (P6)
// through it (on the GPU with --cuda), prints the output size and the class histogram, and
// optionally writes the logits (float32, N x C x H x W, row-major) to a file. The image is
// normalised with the mean and std of the export's nasfast.json; it is not resized: give it at the
// scale nasfast.json names. Bad input (files, images, where the logits go) is reported in one line
// with exit status 2. No <filesystem>: a Jetson TX2's GCC 7 lacks it.
#include <caffe2/serialize/inline_container.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/stat.h>

namespace {

// A problem of the input, not of the program: exit status 2.
struct BadInput : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* const kPpmNeeded =
    "an RGB binary PPM (P6) is needed: PIL.Image.open(f).convert(\"RGB\").save(\"x.ppm\") writes one";

std::string first_line(const std::string& text) {
  const size_t start = std::min(text.find_first_not_of(" \n"), text.size());
  return text.substr(start, text.find('\n', start) - start);
}

std::ifstream open_for_reading(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw BadInput("cannot open " + path + ": " + std::strerror(errno));
  // A directory opens; only reading it fails.
  struct stat status;
  if (stat(path.c_str(), &status) == 0 && S_ISDIR(status.st_mode))
    throw BadInput("cannot open " + path + ": " + std::strerror(EISDIR));
  return in;
}

// torch::jit::load calls a training checkpoint (torch.save's zip, with data.pkl but no
// TorchScript constants.pkl) a corrupted file: say what it is and how to export it instead.
void check_is_an_export(const std::string& path) {
  std::ifstream file = open_for_reading(path);
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> archive;
  try {
    archive = std::make_unique<caffe2::serialize::PyTorchStreamReader>(&file);
  } catch (const c10::Error&) {
    throw BadInput(path + ": not a model file (python -m nasfast.export writes one)");
  }
  if (!archive->hasRecord("constants.pkl") && archive->hasRecord("data.pkl"))
    throw BadInput(path + ": a training checkpoint, not an export: python -m nasfast.export --checkpoint " + path +
                   " --out model.pt makes one");
}

struct Export {
  torch::jit::script::Module model;
  std::string info;  // its nasfast.json
};

Export load_export(const std::string& path) {
  check_is_an_export(path);
  torch::jit::ExtraFilesMap extra{{"nasfast.json", ""}};
  try {
    torch::jit::script::Module model = torch::jit::load(path, c10::nullopt, extra);
    model.eval();
    return {model, extra["nasfast.json"]};
  } catch (const std::exception& error) {  // a damaged archive; an op of a library not linked (ErrorReport)
    const auto* c10_error = dynamic_cast<const c10::Error*>(&error);
    const std::string reason = first_line(c10_error ? c10_error->what_without_backtrace() : error.what());
    const bool needs_ops = reason.find("nasfast::") != std::string::npos;
    throw BadInput(path + ": " + reason +
                   (needs_ops ? " (it needs the nasfast ops library: build this program with -DNASFAST_OPS, or "
                                "export with --reference-ops)"
                              : ""));
  }
}

// The next token of a PPM header: whitespace and # comments (to the end of a line) skipped.
std::string header_token(std::istream& in) {
  std::string token;
  for (int c = in.get(); c != EOF; c = in.get()) {
    if (c == '#' && token.empty()) {
      std::string comment;
      std::getline(in, comment);
    } else if (std::isspace(c)) {
      if (!token.empty()) break;  // the whitespace after the token is consumed, as P6 requires
    } else {
      token += static_cast<char>(c);
    }
  }
  return token;
}

// The magic number comes first: the rest of the header means something else in other formats.
void check_is_p6(const std::string& path, std::istream& in) {
  static const std::map<std::string, std::string> other_netpbm{
      {"P1", "a black and white PBM image (P1, ASCII)"}, {"P2", "a grey PGM image (P2, ASCII)"},
      {"P3", "an ASCII PPM image (P3)"},                   {"P4", "a black and white PBM image (P4)"},
      {"P5", "a grey PGM image (P5)"}};
  std::string magic(2, '\0');
  in.read(&magic[0], 2);
  if (in && magic == "P6") return;
  const auto kind = other_netpbm.find(magic);
  throw BadInput(path + ": " + (kind == other_netpbm.end() ? "not a PPM image" : kind->second) + "; " + kPpmNeeded);
}

torch::Tensor read_ppm(const std::string& path) {
  std::ifstream in = open_for_reading(path);
  check_is_p6(path, in);
  int width = 0, height = 0, max_value = 0;
  try {
    width = std::stoi(header_token(in));
    height = std::stoi(header_token(in));
    max_value = std::stoi(header_token(in));
  } catch (const std::logic_error&) {
    throw BadInput(path + ": not a PPM image (its header lacks the size)");
  }
  if (max_value != 255)
    throw BadInput(path + ": a PPM image of maximum value " + std::to_string(max_value) +
                   "; 8-bit channels (maximum value 255) are needed");
  const std::string size = std::to_string(width) + " x " + std::to_string(height);
  if (width <= 0 || height <= 0) throw BadInput(path + ": its header gives the size " + size);
  // The pixels the header announces must be in the file before they are allocated.
  const std::streamoff start = in.tellg(), end = in.seekg(0, std::ios::end).tellg();
  const uint64_t bytes = static_cast<uint64_t>(width) * static_cast<uint64_t>(height) * 3;
  if (end - start < 0 || static_cast<uint64_t>(end - start) < bytes)
    throw BadInput(path + ": truncated pixel data (" + size + " pixels need " + std::to_string(bytes) +
                   " bytes, the file has " + std::to_string(end - start) + ")");
  in.seekg(start);
  std::vector<uint8_t> pixels(bytes);
  in.read(reinterpret_cast<char*>(pixels.data()), static_cast<std::streamsize>(pixels.size()));
  if (!in) throw BadInput(path + ": cannot read its pixel data");
  torch::Tensor image = torch::from_blob(pixels.data(), {height, width, 3}, torch::kUInt8).clone();
  return image.permute({2, 0, 1}).to(torch::kFloat32).div(255).unsqueeze(0);
}

// The number, or the numbers of the list, after "key": in a flat JSON text (empty if absent).
std::vector<float> json_numbers(const std::string& json, const std::string& key) {
  std::vector<float> numbers;
  const std::string quoted = "\"" + key + "\":";
  const size_t at = json.find(quoted);
  const size_t first = at == std::string::npos ? at : json.find_first_not_of(' ', at + quoted.size());
  if (first == std::string::npos) return numbers;
  const size_t end = json[first] == '[' ? json.find(']', first) : json.find_first_of(",}", first);
  std::string text = json.substr(first, end == std::string::npos ? end : end - first);
  for (char& c : text)
    if (c == '[' || c == ',') c = ' ';
  std::istringstream values(text);
  for (float value; values >> value;) numbers.push_back(value);
  return numbers;
}

torch::Tensor normalise(const torch::Tensor& image, const std::string& info) {
  std::vector<float> mean = json_numbers(info, "mean"), std = json_numbers(info, "std");
  if (mean.size() != 3 || std.size() != 3) {  // exports that did not record them: ImageNet's, as in training
    mean = {0.485f, 0.456f, 0.406f};
    std = {0.229f, 0.224f, 0.225f};
  }
  return (image - torch::tensor(mean).view({1, 3, 1, 1})) / torch::tensor(std).view({1, 3, 1, 1});
}

BadInput cannot_write(const std::string& path) {
  return BadInput("cannot write the logits to " + path + ": " + std::strerror(errno));
}

void write_file(const std::string& path, const std::string& name_for_errors, const void* data, size_t bytes) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (!file) throw cannot_write(name_for_errors);
  if (std::fwrite(data, 1, bytes, file) != bytes) {
    const BadInput error = cannot_write(name_for_errors);  // before fclose changes errno
    std::fclose(file);
    throw error;
  }
  if (std::fclose(file) != 0) throw cannot_write(name_for_errors);  // it writes what was buffered
}

bool same_file(const std::string& a, const std::string& b) {
  struct stat first, second;
  return stat(a.c_str(), &first) == 0 && stat(b.c_str(), &second) == 0 && first.st_dev == second.st_dev &&
         first.st_ino == second.st_ino;
}

// The logits replace an earlier file there, but never the model, the image, another model or
// image (a path given in the wrong place), or what is not a regular file (a device, say).
void check_logits_path(const std::string& path, const std::string& model_path, const std::string& image_path) {
  struct stat status;
  if (stat(path.c_str(), &status) != 0) return;  // a new file (or one that cannot be written: said when written)
  const std::string refused = "will not write the logits over " + path + ": ";
  if (S_ISDIR(status.st_mode)) return;  // refused when written, with the reason
  if (!S_ISREG(status.st_mode)) throw BadInput(refused + "not a regular file");
  const char* input = same_file(path, model_path) ? "model" : same_file(path, image_path) ? "image" : nullptr;
  if (input) throw BadInput(refused + "it is the " + input + "; give another path");
  char start[4] = {0, 0, 0, 0};
  std::ifstream(path, std::ios::binary).read(start, sizeof start);
  const bool zip = std::memcmp(start, "PK\x03\x04", 4) == 0;  // a model or a checkpoint
  const bool netpbm =
      start[0] == 'P' && start[1] >= '1' && start[1] <= '7' && std::isspace(static_cast<unsigned char>(start[2]));
  const bool image = netpbm || std::memcmp(start, "\x89PNG", 4) == 0 || std::memcmp(start, "\xff\xd8\xff", 3) == 0;
  if (zip || image)
    throw BadInput(refused + "it holds " + (zip ? "a model or a checkpoint" : "an image") + ", not logits; give "
                   "another path");
}

// Written beside the file and renamed once complete: a failed write (a full disk) leaves no
// partial file, and an earlier file stays as it was.
void write_logits(const torch::Tensor& logits, const std::string& path) {
  const std::string partial = path + ".partial";
  try {
    write_file(partial, path, logits.data_ptr<float>(), static_cast<size_t>(logits.numel()) * sizeof(float));
    if (std::rename(partial.c_str(), path.c_str()) != 0) throw cannot_write(path);
  } catch (const BadInput&) {
    std::remove(partial.c_str());
    throw;
  }
}

void print_summary(const torch::Tensor& logits) {
  std::cout << "output size: " << logits.sizes() << "\n";
  const torch::Tensor classes = logits.argmax(1).flatten();
  const torch::Tensor counts = torch::bincount(classes, {}, logits.size(1));
  std::cout << "class histogram:";
  for (int64_t c = 0; c < counts.size(0); ++c) std::cout << " " << c << ":" << counts[c].item<int64_t>();
  std::cout << "\n";
}

void segment(const std::string& model_path, const std::string& image_path, const std::string& logits_path,
             bool cuda) {
  if (cuda && !torch::cuda::is_available()) throw BadInput("--cuda: this libtorch finds no CUDA GPU");
  if (!logits_path.empty()) check_logits_path(logits_path, model_path, image_path);
  const torch::Device device = cuda ? torch::kCUDA : torch::kCPU;
  Export exported = load_export(model_path);
  exported.model.to(device);
  const torch::Tensor image = normalise(read_ppm(image_path), exported.info).to(device);
  torch::NoGradGuard no_grad;
  const torch::Tensor logits = exported.model.forward({image}).toTensor().to(torch::kCPU).contiguous();
  if (!logits_path.empty()) write_logits(logits, logits_path);
  // Printed once nothing can fail: a failed run prints its error alone.
  const std::vector<float> scale = json_numbers(exported.info, "scale");
  if (!scale.empty() && scale[0] != 1.0f)
    std::cout << "note: the model was trained on images scaled by " << scale[0]
              << " (nasfast.json); the image is used at its size\n";
  print_summary(logits);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  const auto flag = std::find(args.begin(), args.end(), "--cuda");
  const bool cuda = flag != args.end();
  if (cuda) args.erase(flag);
  const auto option = std::find_if(args.begin(), args.end(), [](const std::string& a) { return a.rfind("-", 0) == 0; });
  if (args.size() < 2 || args.size() > 3 || option != args.end()) {
    if (option != args.end()) std::cerr << argv[0] << ": unknown option " << *option << "\n";
    std::cerr << "usage: " << argv[0] << " model.pt image.ppm [logits.bin] [--cuda]\n";
    return 2;
  }
  const char* const prog = "nasfast_segment: error: ";
  try {
    segment(args[0], args[1], args.size() > 2 ? args[2] : "", cuda);
  } catch (const BadInput& error) {
    std::cerr << prog << error.what() << "\n";
    return 2;
  } catch (const c10::Error& error) {  // a failure of libtorch: its message, not its backtrace
    std::cerr << prog << error.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& error) {
    std::cerr << prog << error.what() << "\n";
    return 1;
  }
  return 0;
}
