/* log: diagnostics on stderr, one line each, filtered by a level that can change at run time
 * (NEXTUP_LOG_LEVEL at start, POST /logging on the admin listener later), as text or as one
 * JSON object a line (NEXTUP_LOG_FORMAT).
 * API: log_set_level(), log_get_level(), log_enabled(), log_level_name(), log_level_parse(),
 *      log_set_format(), log_msg() and the LOG_* macros. */
#ifndef SIDECAR_LOG_H
#define SIDECAR_LOG_H

#include "config.h"

/* Any thread, any time: workers see the new level on their next line. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
int log_enabled(enum log_level level);
/* "error", "warn", "info" or "debug". */
const char *log_level_name(enum log_level level);
/* <text> (<len> bytes) as a level: 0, or -EINVAL when it is none of the four names. */
int log_level_parse(const char *text, size_t len, enum log_level *out);
/* Set once at start, before any thread but the main one runs. */
void log_set_format(enum log_format format);
/* Writes "<time> <level> <message>\n", or {"time":...,"level":...,"msg":...}\n with
 * LOG_FORMAT_JSON (the message escaped, invalid UTF-8 replaced), to stderr if <level> is
 * enabled; one write per line, so lines of threads never interleave. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOG_ERROR(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define LOG_WARN(...)  log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define LOG_INFO(...)  log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) do { if (log_enabled(LOG_LEVEL_DEBUG)) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__); } while (0)

#endif
