/* cmd_tokenizer_train.h - the `ccoe tokenizer train` command (cmd_tokenizer_train.c). */
#ifndef CCOE_CMD_TOKENIZER_TRAIN_H
#define CCOE_CMD_TOKENIZER_TRAIN_H

/* ccoe tokenizer train FILE... --vocab N -o DIR [--min-frequency N] [--special TOK]...
 * [--no-special]: argv[0] is the first argument after "train". Returns the exit code (0, 2 for
 * usage errors, else ccoe_error_exit_code). */
int ccoe_cmd_tokenizer_train(int argc, char **argv);

extern const char ccoe_cmd_tokenizer_train_usage[];

#endif
