// The test program's one assertion macro, shared by its files: a failed CHECK is counted and
// printed, and the run goes on (main's exit status says whether any failed).
#pragma once

#include <cstdio>

extern int g_failures;
extern int g_checks;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    ++g_checks;                                                                      \
    if (!(cond)) {                                                                   \
      ++g_failures;                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                                \
  } while (0)

// cpp/tests/test_listing.cpp
void test_listing_pages();
// cpp/tests/test_body_sender.cpp
void test_body_sender();
