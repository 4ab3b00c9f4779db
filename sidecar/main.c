/* nextup: the binary is nextup_main() with the built-in decision (or the
 * plugin named by NEXTUP_DECISION_PLUGIN). */
#include "nextup.h"

int main(int argc, char **argv)
{
    return nextup_main(argc, argv, NULL);
}
