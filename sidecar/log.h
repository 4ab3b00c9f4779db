/* log: diagnostics on stderr, one line each, filtered by NEXTUP_LOG_LEVEL.
 * API: log_set_level(), log_enabled(), log_msg() and the LOG_* macros. */
#ifndef SIDECAR_LOG_H
#define SIDECAR_LOG_H

#include "config.h"

void log_set_level(enum log_level level);
int log_enabled(enum log_level level);
/* Writes "<time> <level> <message>\n" to stderr if <level> is enabled. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOG_ERROR(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define LOG_WARN(...)  log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define LOG_INFO(...)  log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) do { if (log_enabled(LOG_LEVEL_DEBUG)) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__); } while (0)

#endif
