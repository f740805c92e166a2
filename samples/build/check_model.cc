// Builds against the TFLite C array tapeout generates (model.cc/model.h) and checks it is a
// TFLite flatbuffer: the file identifier "TFL3" sits at bytes 4..7.
#include <cstdio>
#include <cstring>

#include "model.h"

int main() {
  if (g_digits_model_len < 8 || std::memcmp(g_digits_model + 4, "TFL3", 4) != 0) {
    std::fprintf(stderr, "g_digits_model is not a TFLite flatbuffer\n");
    return 1;
  }
  std::printf("g_digits_model: %u bytes, identifier TFL3\n", g_digits_model_len);
  return 0;
}
