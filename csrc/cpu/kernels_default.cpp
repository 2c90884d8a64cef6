// The kernels for the baseline ISA (any CPU): the same loops with one scalar lane.
#define PVT_ISA generic
#include "kernels.h"
#include "resample.h"
#include "attention.h"
#include "token_conv.h"

PVT_DEFINE_ENTRY_POINTS(default, ScalarOps)
