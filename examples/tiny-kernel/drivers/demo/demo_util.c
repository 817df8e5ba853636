/* Helpers of the demo module. */
#include <tiny.h>

static int level = 1;

int demo_value(void)
{
	return level;
}
