// Clang's thread-safety analysis (-Wthread-safety): which mutex guards which
// data, which functions need it held, which must not hold it. The compiler
// checks every access; with GCC the macros expand to nothing.
//
// libstdc++'s std::mutex carries no annotations, so the analysis cannot see
// it being locked: annotate data with a goldcache::Mutex (util/mutex.h),
// which is a std::mutex that clang can follow.
//
//   class Pool {
//    public:
//     void Put(int v) EXCLUDES(mu_) {
//       MutexLock lock(mu_);
//       free_.push_back(v);
//     }
//    private:
//     void GrowLocked() REQUIRES(mu_);
//     Mutex mu_;
//     std::vector<int> free_ GUARDED_BY(mu_);
//   };
//
// The clang stages of scripts/test.sh (build-fuzz/, build-tsan/) compile with
// -Wthread-safety -Werror=thread-safety.
#pragma once

#if defined(__clang__)
#define GC_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define GC_THREAD_ANNOTATION(x)
#endif

// On a class: instances are a capability (a mutex) named `x` in messages.
#define CAPABILITY(x) GC_THREAD_ANNOTATION(capability(x))
// On an RAII class whose constructor acquires and destructor releases.
#define SCOPED_CAPABILITY GC_THREAD_ANNOTATION(scoped_lockable)

// On data: reading or writing it needs the capability held.
#define GUARDED_BY(x) GC_THREAD_ANNOTATION(guarded_by(x))
// On a pointer: the data it points to needs the capability held.
#define PT_GUARDED_BY(x) GC_THREAD_ANNOTATION(pt_guarded_by(x))

// Lock order: this capability is taken before / after the listed ones.
#define ACQUIRED_BEFORE(...) GC_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
#define ACQUIRED_AFTER(...) GC_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))

// On functions: callers must hold (REQUIRES) or must not hold (EXCLUDES).
#define REQUIRES(...) GC_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) GC_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
#define EXCLUDES(...) GC_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))

// On functions that take or drop a capability.
#define ACQUIRE(...) GC_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define RELEASE(...) GC_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) GC_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))

// Tells the analysis the capability is held here (checked at run time by
// whoever implements it, if at all).
#define ASSERT_CAPABILITY(x) GC_THREAD_ANNOTATION(assert_capability(x))
// On a function returning a reference to a capability.
#define RETURN_CAPABILITY(x) GC_THREAD_ANNOTATION(lock_returned(x))

// Turns the analysis off for one function. Say why next to every use.
#define NO_THREAD_SAFETY_ANALYSIS GC_THREAD_ANNOTATION(no_thread_safety_analysis)
