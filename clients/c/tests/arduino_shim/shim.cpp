// SPDX-License-Identifier: MIT
// A host stand-in for the Arduino core: Serial1 is the link to a fake
// daemon that never answers, Serial the console; main runs setup() and
// loop() over 30 simulated seconds, and checks the sketch said HELLO and
// gave up after its retransmissions, as the library promises.
#include <stdio.h>
#include <string.h>

#include "Arduino.h"

HardwareSerial Serial, Serial1;
static unsigned long clock_ms;
static int frames_out, console_failed;

void HardwareSerial::begin(unsigned long) {}
int HardwareSerial::available() { return 0; }
int HardwareSerial::read() { return -1; }
size_t HardwareSerial::write(const uint8_t *p, size_t n)
{
    if (this == &Serial1 && n >= 7 && p[0] == 0x55)
        frames_out++;
    return n;
}
size_t HardwareSerial::println(const char *s)
{
    if (strstr(s, "[failed]"))
        console_failed++;
    return strlen(s);
}
unsigned long millis() { return clock_ms; }
unsigned long micros() { return clock_ms * 1000; }
int analogRead(uint8_t) { return 7; }
void pinMode(uint8_t, uint8_t) {}
void digitalWrite(uint8_t, uint8_t) {}

void setup();
void loop();

int main()
{
    setup();
    for (clock_ms = 0; clock_ms < 30000; clock_ms++)
        loop();
    printf("arduino sketch on the shim: %d HELLOs sent, gave up %d time(s)\n", frames_out, console_failed);
    return frames_out == 9 && console_failed == 1 ? 0 : 1;
}
