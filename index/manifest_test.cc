#include "index/manifest.h"

#include <gtest/gtest.h>

#include "index/digest.h"

namespace goldcache::index {
namespace {

Manifest Sample() {
  Manifest m;
  m.chunk_size = 1 << 20;
  m.size = 3 * (1 << 20) + 5;
  m.mtime_ns = 1700000000123456789;
  m.ctime_ns = -7;
  m.ino = 42;
  for (int i = 0; i < 4; ++i) m.digests.push_back(ComputeDigest(std::string(1, char('a' + i))));
  m.trace = {2, 0, 1};
  return m;
}

TEST(Digest, IsSha256) {
  EXPECT_EQ(DigestHex(ComputeDigest(std::string("abc"))),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Manifest, RoundTripsExactly) {
  const Manifest m = Sample();
  const std::string bytes = EncodeManifest(m);
  auto back = DecodeManifest(bytes);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->digests, m.digests);
  EXPECT_EQ(back->trace, m.trace);
  EXPECT_EQ(EncodeManifest(*back), bytes);
}

TEST(Manifest, DescribesOnlyItsGenerationAndChunkSize) {
  const Manifest m = Sample();
  GenerationKey key{"ds:t.img", m.size, m.mtime_ns, m.ctime_ns, m.ino};
  EXPECT_TRUE(m.Describes(key, m.chunk_size));
  EXPECT_FALSE(m.Describes(key, m.chunk_size / 2));
  for (auto change :
       {+[](GenerationKey& k) { k.size += 1; }, +[](GenerationKey& k) { k.mtime_ns += 1; },
        +[](GenerationKey& k) { k.ctime_ns += 1; }, +[](GenerationKey& k) { k.ino += 1; }}) {
    GenerationKey other = key;
    change(other);
    EXPECT_FALSE(m.Describes(other, m.chunk_size));
  }
}

TEST(Manifest, RejectsEveryDamage) {
  const std::string bytes = EncodeManifest(Sample());
  std::string why;
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] ^= 0x01;
    EXPECT_FALSE(DecodeManifest(bad, &why)) << "flip at " << i;
  }
  EXPECT_FALSE(DecodeManifest(bytes.substr(0, bytes.size() - 1), &why));
  EXPECT_NE(why.find("checksum"), std::string::npos) << why;
  EXPECT_FALSE(DecodeManifest("", &why));
  EXPECT_FALSE(DecodeManifest(bytes + "x", &why));
}

TEST(Manifest, RejectsInconsistentButIntactContent) {
  Manifest m = Sample();
  m.digests.pop_back();  // one chunk short of the size
  std::string why;
  EXPECT_FALSE(DecodeManifest(EncodeManifest(m), &why));
  EXPECT_NE(why.find("chunk count"), std::string::npos) << why;
  m = Sample();
  m.trace.push_back(4);  // past the last chunk
  EXPECT_FALSE(DecodeManifest(EncodeManifest(m), &why));
  EXPECT_NE(why.find("trace"), std::string::npos) << why;
}

}  // namespace
}  // namespace goldcache::index
