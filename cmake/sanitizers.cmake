# ASan + UBSan for the whole build, including tests, when MUSICGW_SANITIZE is on.
if(MUSICGW_SANITIZE)
  # -O1 keeps sanitized tests fast enough for CI while keeping stacks readable. -g1 keeps the
  # line tables a sanitizer report needs and drops the rest of the debug info, and -gz
  # compresses what is left: the full -g tree took about 5 GB of a CI disk shared with others.
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=undefined -O1 -g1 -gz)
  add_link_options(-fsanitize=address,undefined -gz)
endif()
