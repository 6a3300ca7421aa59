# The `layering` test: every #include "<folder>/..." in src/<layer>/ must name the layer itself or a
# layer it may use. Run as
#   cmake -DSOURCE_DIR=<dir holding src/> "-DRULES=util:;routing:util;..." -P check_layering.cmake
# RULES lists each layer with the layers it may include (comma-separated; the top-level
# CMakeLists.txt derives them from each layer's link dependencies). A folder under src/ with no rule
# is itself an error, so a new layer cannot slip in unchecked. Exits non-zero listing every
# offending file and include.
cmake_minimum_required(VERSION 3.25)
if(NOT SOURCE_DIR OR NOT DEFINED RULES)
  message(FATAL_ERROR "check_layering.cmake: pass -DSOURCE_DIR=... and -DRULES=...")
endif()

set(layers "")
foreach(rule IN LISTS RULES)
  string(REPLACE ":" ";" parts "${rule}")
  list(GET parts 0 layer)
  list(LENGTH parts n)
  set(allowed_${layer} "${layer}")
  if(n GREATER 1)
    list(GET parts 1 deps)
    string(REPLACE "," ";" deps "${deps}")
    list(APPEND allowed_${layer} ${deps})
  endif()
  list(APPEND layers ${layer})
endforeach()

set(violations "")
file(GLOB folders LIST_DIRECTORIES true RELATIVE "${SOURCE_DIR}/src" "${SOURCE_DIR}/src/*")
foreach(folder IN LISTS folders)
  if(NOT IS_DIRECTORY "${SOURCE_DIR}/src/${folder}")
    continue()
  endif()
  if(NOT folder IN_LIST layers)
    list(APPEND violations "src/${folder}/ is not a known layer (add it to the layering rules)")
    continue()
  endif()
  file(GLOB_RECURSE files RELATIVE "${SOURCE_DIR}" "${SOURCE_DIR}/src/${folder}/*.cc"
       "${SOURCE_DIR}/src/${folder}/*.h")
  foreach(f IN LISTS files)
    file(STRINGS "${SOURCE_DIR}/${f}" includes REGEX "^[ \t]*#[ \t]*include[ \t]*\"[A-Za-z0-9_]+/")
    foreach(line IN LISTS includes)
      string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*\"([A-Za-z0-9_]+)/([^\"]*)\".*" "\\1;\\2"
             target "${line}")
      list(GET target 0 used)
      list(GET target 1 header)
      # Only folders that are layers count; "CLI/CLI.hpp" or "nlohmann/json.hpp" are libraries.
      if(used IN_LIST layers AND NOT used IN_LIST allowed_${folder})
        string(REPLACE ";" ", " may "${allowed_${folder}}")
        list(APPEND violations "${f} includes ${used}/${header}: ${folder} may include only ${may}")
      endif()
    endforeach()
  endforeach()
endforeach()

if(violations)
  list(LENGTH violations count)
  string(REPLACE ";" "\n  " text "${violations}")
  message(FATAL_ERROR "layering: ${count} violation(s):\n  ${text}")
endif()
message(STATUS "layering: every include in src/ respects the layers (${layers})")
