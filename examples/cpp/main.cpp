// Loads a TorchScript export of nasfast (python -m nasfast.export), runs a binary PPM image (P6)
// through it, prints the output size and the class histogram, and optionally writes the logits
// (float32, N x C x H x W, row-major) to a file.
#include <torch/script.h>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

torch::Tensor read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::string magic;
  int width = 0, height = 0, max_value = 0;
  in >> magic >> width >> height >> max_value;
  if (magic != "P6" || width <= 0 || height <= 0 || max_value != 255)
    throw std::runtime_error(path + ": expected a binary PPM (P6) with 8-bit channels");
  in.get();  // the single whitespace after the header
  std::vector<uint8_t> pixels(static_cast<size_t>(width) * height * 3);
  in.read(reinterpret_cast<char*>(pixels.data()), static_cast<std::streamsize>(pixels.size()));
  if (!in) throw std::runtime_error(path + ": truncated pixel data");
  torch::Tensor image = torch::from_blob(pixels.data(), {height, width, 3}, torch::kUInt8).clone();
  return image.permute({2, 0, 1}).to(torch::kFloat32).div(255).unsqueeze(0);
}

torch::Tensor normalise(const torch::Tensor& image) {  // ImageNet mean and std, as in training
  const auto mean = torch::tensor({0.485f, 0.456f, 0.406f}).view({1, 3, 1, 1});
  const auto std = torch::tensor({0.229f, 0.224f, 0.225f}).view({1, 3, 1, 1});
  return (image - mean) / std;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " model.pt image.ppm [logits.bin]\n";
    return 2;
  }
  try {
    torch::jit::script::Module model = torch::jit::load(argv[1]);
    model.eval();
    torch::NoGradGuard no_grad;
    const torch::Tensor logits = model.forward({normalise(read_ppm(argv[2]))}).toTensor().contiguous();
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
    }
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
