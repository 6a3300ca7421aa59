// Fixture for the layering_catches_violation test: an allowed include (model may use routing).
#pragma once
#include "routing/router.h"
#include <nlohmann/json.hpp>
