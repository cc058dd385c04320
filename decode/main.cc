// sirocco-decode: the decode worker (see decode/worker_main.h for flags).
#include "decode/worker_main.h"

int main(int argc, char** argv) { return sirocco::decode::WorkerMain(argc, argv, sirocco::decode::WorkerRole::kDecode); }
