// The static tests are checked by the compiler; running the program only reports success.
int main() { return 0; }
