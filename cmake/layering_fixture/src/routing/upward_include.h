// Fixture for the layering_catches_violation test: a routing header that includes the model layer,
// which the layering check must reject. Not compiled.
#pragma once
#include "model/engine.h"
