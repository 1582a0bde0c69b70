#include "agent/inventory_metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sstream>

namespace goldcache::agent {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Render(const std::vector<DatastoreInventory>& datastores) {
  return RenderInventoryPrometheus(InventoryFamilies(datastores));
}

TEST(InventoryMetrics, NoTemplatesOrDesktopsNoFamilies) {
  EXPECT_TRUE(InventoryFamilies({}).empty());
  EXPECT_TRUE(InventoryFamilies({DatastoreInventory{"ds1", {}, {}}}).empty());
  EXPECT_EQ(Render({}), "");
}

TEST(InventoryMetrics, OneSeriesPerTemplateAndDesktopLabelledByDatastoreAndPath) {
  roles::Templates::Info t{"templates/win11.img", 7, 1 << 30, 1 << 20, 3, {}};
  t.io.read_ops = 10;
  t.io.read_bytes = 40960;
  t.io.read_bytes_from_datastore = 4096;
  t.io.read_latency_ns = 1'500'000'000;
  roles::Desktops::Info d{"pool/vm\"017\".qcow2", false, 1 << 20, 8192, 4096, 1, {}};
  d.io.write_ops = 2;
  d.io.write_bytes = 8192;
  std::string text = Render({DatastoreInventory{"ds1", {t}, {d}}});

  EXPECT_THAT(text, HasSubstr("# TYPE goldcache_template_read_ops_total counter\n"
                              "goldcache_template_read_ops_total{datastore=\"ds1\","
                              "template=\"templates/win11.img\"} 10\n"));
  EXPECT_THAT(text, HasSubstr("goldcache_template_read_seconds_total{datastore=\"ds1\","
                              "template=\"templates/win11.img\"} 1.5\n"));
  EXPECT_THAT(text, HasSubstr("goldcache_template_read_datastore_bytes_total{datastore=\"ds1\","
                              "template=\"templates/win11.img\"} 4096\n"));
  EXPECT_THAT(text, HasSubstr("goldcache_template_cached_bytes{datastore=\"ds1\","
                              "template=\"templates/win11.img\"} 1048576\n"));
  // Quotes in a path are escaped; the tier is a label of its own.
  EXPECT_THAT(text, HasSubstr("goldcache_desktop_overlay_bytes{datastore=\"ds1\","
                              "desktop=\"pool/vm\\\"017\\\".qcow2\",tier=\"ram\"} 8192\n"));
  EXPECT_THAT(text, HasSubstr("goldcache_desktop_overlay_bytes{datastore=\"ds1\","
                              "desktop=\"pool/vm\\\"017\\\".qcow2\",tier=\"disk\"} 4096\n"));
  EXPECT_THAT(text, HasSubstr("goldcache_desktop_write_bytes_total{datastore=\"ds1\","
                              "desktop=\"pool/vm\\\"017\\\".qcow2\"} 8192\n"));
  EXPECT_THAT(text, Not(HasSubstr("template=\"pool/")));

  // Every family once, with HELP and TYPE before its series.
  std::istringstream lines(text);
  std::string line, family;
  int types = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("# HELP ", 0) == 0) {
      family = line.substr(7, line.find(' ', 7) - 7);
    } else if (line.rfind("# TYPE ", 0) == 0) {
      ++types;
      EXPECT_EQ(line.substr(7, family.size()), family);
    } else {
      EXPECT_EQ(line.rfind(family + "{", 0), 0u) << line << " outside its family " << family;
    }
  }
  EXPECT_EQ(types, 15);
}

TEST(InventoryMetrics, JsonHasTheRegistrysShapeAndTheSameNumbers) {
  roles::Templates::Info t{"templates/t.img", 1, 4096, 4096, 0, {}};
  t.io.read_ops = 3;
  t.io.read_latency_ns = 250'000'000;
  nlohmann::json metrics = {{"goldcache_cache_hits_total", {{"type", "counter"}}}};
  AddInventoryJson(InventoryFamilies({DatastoreInventory{"ds1", {t}, {}}}), metrics);
  EXPECT_TRUE(metrics.contains("goldcache_cache_hits_total"));  // what was there stays
  const nlohmann::json& ops = metrics["goldcache_template_read_ops_total"];
  EXPECT_EQ(ops["type"], "counter");
  ASSERT_EQ(ops["metrics"].size(), 1u);
  EXPECT_EQ(ops["metrics"][0]["labels"],
            (nlohmann::json{{"datastore", "ds1"}, {"template", "templates/t.img"}}));
  EXPECT_TRUE(ops["metrics"][0]["value"].is_number_unsigned());
  EXPECT_EQ(ops["metrics"][0]["value"], 3u);
  EXPECT_DOUBLE_EQ(
      metrics["goldcache_template_read_seconds_total"]["metrics"][0]["value"].get<double>(), 0.25);
  EXPECT_FALSE(metrics.contains("goldcache_desktop_read_ops_total"));  // no desktop, no family
}

}  // namespace
}  // namespace goldcache::agent
