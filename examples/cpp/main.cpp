// Loads a TorchScript export of nasfast (python -m nasfast.export), runs a binary PPM image (P6)
// through it, prints the output size and the class histogram, and optionally writes the logits
// (float32, N x C x H x W, row-major) to a file. The image is normalised with the mean and std of
// the export's nasfast.json; it is not resized: give it at the scale nasfast.json names.
#include <torch/script.h>

#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

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

torch::Tensor read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  const std::string magic = header_token(in);
  int width = 0, height = 0, max_value = 0;
  try {
    width = std::stoi(header_token(in));
    height = std::stoi(header_token(in));
    max_value = std::stoi(header_token(in));
  } catch (const std::logic_error&) {
    throw std::runtime_error(path + ": not a PPM image (its header lacks the size)");
  }
  if (magic != "P6" || max_value != 255)
    throw std::runtime_error(path + ": expected a binary PPM (P6) with 8-bit channels");
  const std::string size = std::to_string(width) + " x " + std::to_string(height);
  if (width <= 0 || height <= 0) throw std::runtime_error(path + ": its header gives the size " + size);
  // The pixels the header announces must be in the file before they are allocated.
  const std::streamoff start = in.tellg(), end = in.seekg(0, std::ios::end).tellg();
  const uint64_t bytes = static_cast<uint64_t>(width) * static_cast<uint64_t>(height) * 3;
  if (end - start < 0 || static_cast<uint64_t>(end - start) < bytes)
    throw std::runtime_error(path + ": truncated pixel data (" + size + " pixels need " + std::to_string(bytes) +
                             " bytes, the file has " + std::to_string(end - start) + ")");
  in.seekg(start);
  std::vector<uint8_t> pixels(bytes);
  in.read(reinterpret_cast<char*>(pixels.data()), static_cast<std::streamsize>(pixels.size()));
  if (!in) throw std::runtime_error(path + ": cannot read its pixel data");
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

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::cerr << "usage: " << argv[0] << " model.pt image.ppm [logits.bin]\n";
    return 2;
  }
  try {
    if (!std::filesystem::is_regular_file(argv[1]))
      throw std::runtime_error(std::string(argv[1]) + ": not a model file (python -m nasfast.export writes one)");
    torch::jit::ExtraFilesMap extra{{"nasfast.json", ""}};
    torch::jit::script::Module model = torch::jit::load(argv[1], c10::nullopt, extra);
    model.eval();
    const std::vector<float> scale = json_numbers(extra["nasfast.json"], "scale");
    if (!scale.empty() && scale[0] != 1.0f)
      std::cout << "note: the model was trained on images scaled by " << scale[0]
                << " (nasfast.json); the image is used at its size\n";
    torch::NoGradGuard no_grad;
    const torch::Tensor image = normalise(read_ppm(argv[2]), extra["nasfast.json"]);
    const torch::Tensor logits = model.forward({image}).toTensor().contiguous();
    std::cout << "output size: " << logits.sizes() << "\n";
    const torch::Tensor classes = logits.argmax(1).flatten();
    const torch::Tensor counts = torch::bincount(classes, {}, logits.size(1));
    std::cout << "class histogram:";
    for (int64_t c = 0; c < counts.size(0); ++c) std::cout << " " << c << ":" << counts[c].item<int64_t>();
    std::cout << "\n";
    if (argc > 3) {
      std::ofstream out(argv[3], std::ios::binary);
      out.write(reinterpret_cast<const char*>(logits.data_ptr<float>()),
                static_cast<std::streamsize>(logits.numel() * sizeof(float)));
      out.close();
      if (!out) throw std::runtime_error(std::string("cannot write the logits to ") + argv[3]);
    }
  } catch (const c10::Error& error) {  // a model file libtorch cannot read: its message, not its backtrace
    std::cerr << "error: " << error.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
