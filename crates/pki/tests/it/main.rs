mod ca;
