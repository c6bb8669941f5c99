# ASan + UBSan for the whole build, including tests, when MUSICGW_SANITIZE is on.
if(MUSICGW_SANITIZE)
  # -O1 keeps sanitized tests fast enough for CI while keeping stacks readable.
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=undefined -O1)
  add_link_options(-fsanitize=address,undefined)
endif()
