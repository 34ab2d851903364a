// The *_static.cpp files of this folder are checked by the compiler; running is a formality.
int main() { return 0; }
