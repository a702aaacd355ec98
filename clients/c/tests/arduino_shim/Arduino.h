/* SPDX-License-Identifier: MIT
 * The few Arduino core calls examples/arduino uses, so the sketch can be
 * compile-checked (and run on a host) without an Arduino toolchain. */
#ifndef ARDUINO_SHIM_H
#define ARDUINO_SHIM_H
#include <stddef.h>
#include <stdint.h>

class HardwareSerial {
public:
    void begin(unsigned long baud);
    int available();
    int read();
    size_t write(const uint8_t *p, size_t n);
    size_t println(const char *s);
};
extern HardwareSerial Serial, Serial1;
unsigned long millis();
unsigned long micros();
int analogRead(uint8_t pin);
enum { LOW = 0, HIGH = 1, OUTPUT = 1, A0 = 14 };
void pinMode(uint8_t pin, uint8_t mode);
void digitalWrite(uint8_t pin, uint8_t value);
#endif
