# MUSICGW_FUZZ: a build tree of libFuzzer targets only (fuzz/), compiled by clang with
# -fsanitize=fuzzer-no-link,address,undefined. Every other directory is configured as usual but
# left out of `all`, so only the parsers' libraries the targets link are compiled; tests and
# benchmarks are off. Configure it with CC=clang CXX=clang++ in its own build directory.
if(MUSICGW_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "MUSICGW_FUZZ needs clang (CXX=clang++): libFuzzer is clang's")
  endif()
  if(MUSICGW_SANITIZE)
    message(FATAL_ERROR "MUSICGW_FUZZ brings its own sanitizers; leave MUSICGW_SANITIZE off")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
                      -fno-omit-frame-pointer -O1 -g)
  add_link_options(-fsanitize=address,undefined)
  set(MUSICGW_EXCLUDE_FROM_ALL EXCLUDE_FROM_ALL)
  set(MUSICGW_FUZZ_SECONDS 30 CACHE STRING "How long CTest runs each fuzz target")
endif()

# musicgw_fuzz_target(NAME fuzz_x LIBS lib...): fuzz/<NAME>.cc with libFuzzer's main, and a CTest
# entry (label `fuzz`) that runs it MUSICGW_FUZZ_SECONDS over fuzz/corpus/<NAME>, keeping what
# it finds in the build tree and any crash as an artifact there.
function(musicgw_fuzz_target)
  cmake_parse_arguments(ARG "" "NAME" "LIBS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_NAME}.cc)
  target_include_directories(${ARG_NAME} PRIVATE ${CMAKE_SOURCE_DIR})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_LIBS})
  target_link_options(${ARG_NAME} PRIVATE -fsanitize=fuzzer)
  add_test(NAME ${ARG_NAME}
           COMMAND ${CMAKE_SOURCE_DIR}/fuzz/run_fuzzer.sh $<TARGET_FILE:${ARG_NAME}>
                   ${CMAKE_SOURCE_DIR}/fuzz/corpus/${ARG_NAME}
                   ${CMAKE_CURRENT_BINARY_DIR}/work/${ARG_NAME} ${MUSICGW_FUZZ_SECONDS})
  set_tests_properties(${ARG_NAME} PROPERTIES LABELS fuzz
                       TIMEOUT 600)
endfunction()
