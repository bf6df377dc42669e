/* iniread.h - the INI reader that configs and study files share.
 *
 * libinih (as built by Debian) parses; this layer adds the rules both file kinds follow:
 * - lines are counted, so every message names the right line; leading blanks are dropped (no
 *   line is taken as a continuation of the previous one);
 * - a line longer than libinih's buffer (199 characters) is an error, never silently split;
 * - a key set twice in one section of one text is an error naming both lines;
 * - a line that is neither "[section]" nor "key = value" is an error that quotes it;
 * - every section header is reported, also one without keys (libinih reports only keys).
 * It knows nothing about which sections or keys exist: the callbacks decide.
 */
#ifndef CCOE_INIREAD_H
#define CCOE_INIREAD_H

#include "status.h"

/* Called for each key (value stripped) with its 1-based line. Returns CCOE_OK to go on, or a
 * status with the message in err to stop the parse. `where` is "ORIGIN line N". */
typedef ccoe_status (*ccoe_ini_key_fn)(void *user, const char *section, const char *key,
                                       const char *value, const char *where, int line,
                                       ccoe_error *err);
/* Called for each "[section]" line (may be NULL). */
typedef ccoe_status (*ccoe_ini_section_fn)(void *user, const char *section, const char *where,
                                           int line, ccoe_error *err);

/* Parses text (NUL-terminated; origin such as "file x.ini" names it in messages). */
ccoe_status ccoe_ini_parse(const char *text, const char *origin, ccoe_ini_key_fn on_key,
                           ccoe_ini_section_fn on_section, void *user, ccoe_error *err);

#endif
