# Warnings applied to the project's own targets only (generated code is exempt).
function(musicgw_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)
endfunction()
